//! Haven: bulk operations on patient records for organizations serving refugees and
//! displaced people. `app::run` is the entry point the binary and the tests share.

pub mod app;
pub mod audit;
pub mod auth;
pub mod blobs;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod engine;
pub mod formats;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod store;
pub mod web;
