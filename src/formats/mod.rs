//! File formats of bulk operations: reading import CSV files and writing export files.
//!
//! These modules only translate between bytes and [`crate::domain::patient`] values; they do
//! no I/O of their own beyond the reader or writer they are handed, so the engine decides where
//! bytes come from (decrypted uploads) and go to (encrypted export files). Both directions are
//! streaming, one row or one patient at a time, so memory does not grow with the file size
//! (XLSX export is the one documented exception, see [`export`]).

pub mod csv_import;
pub mod export;
pub mod fhir;
pub mod xlsx;
