//! The HTTP API: one file per resource, shared extractors and the error mapping.

pub mod audit;
pub mod auth;
pub mod bulk;
pub mod error;
pub mod extract;
pub mod health;
pub mod notifications;
pub mod openapi;
pub mod operations;
pub mod patients;
pub mod security;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;

use crate::config::Config;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub engine: Arc<crate::engine::Engine>,
    /// This process's feed of operation events (WebSocket clients).
    pub hub: crate::notify::hub::EventHub,
    /// Bounds concurrent password hashing (logins).
    pub login_hashing: crate::auth::HashingGate,
}

/// The API's routes: those of the OpenAPI document, the WebSocket and `/metrics`, each
/// request counted by its route pattern.
fn api_routes(state: &AppState) -> Router<AppState> {
    let (api, _) = openapi::api_routes().split_for_parts();
    Router::new()
        .merge(api)
        .merge(notifications::websocket_route())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            health::count_requests,
        ))
        .merge(health::metrics_route())
}

/// The JSON 404 and 405 answers; they apply to the routes present, so they come last.
fn with_fallbacks(routes: Router<AppState>) -> Router<AppState> {
    routes
        .fallback(|| async { error::AppError::NotFound("route") })
        // A known path with another method: 405 with the JSON error body (axum keeps
        // its `Allow` header).
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            error::AppError::MethodNotAllowed(method.to_string())
        })
}

/// What every answer goes through: the audit of cross-organization probes, the
/// security headers, the JSON body limit.
fn with_layers(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    routes
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::audit_cross_organization,
        ))
        .layer(axum::middleware::from_fn(security::headers))
        .layer(axum::extract::DefaultBodyLimit::max(
            extract::MAX_JSON_BODY_BYTES,
        ))
}

/// The whole API and the web UI. The web UI sends what its forms change through the
/// API router itself (in-process, see `crate::web::forward`), so it gets its own copy.
pub fn router(state: AppState) -> anyhow::Result<Router> {
    let api = with_layers(with_fallbacks(api_routes(&state)), &state).with_state(state.clone());
    let web = crate::web::routes(api)?;
    Ok(with_layers(with_fallbacks(api_routes(&state).merge(web)), &state).with_state(state))
}

/// The cursor of the next page: the last item's id when the page is full.
pub fn next_cursor<T>(
    items: &[T],
    limit: i64,
    id: impl Fn(&T) -> uuid::Uuid,
) -> Option<uuid::Uuid> {
    (items.len() as i64 == limit)
        .then(|| items.last().map(id))
        .flatten()
}

/// Paging parameters shared by lists: `limit` (1..=200, default 50) and `cursor`.
pub fn page_from_query(
    query: &std::collections::BTreeMap<String, String>,
) -> Result<crate::store::Page, error::AppError> {
    let limit = match query.get("limit") {
        None => 50,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=200).contains(&n) => n,
            _ => {
                return Err(error::AppError::invalid_field(
                    "limit",
                    "out_of_range",
                    "must be a whole number from 1 to 200",
                ))
            }
        },
    };
    let after = match query.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(text) => Some(uuid::Uuid::parse_str(text).map_err(|_| {
            error::AppError::invalid_field(
                "cursor",
                "invalid_cursor",
                "is not a cursor this API returned",
            )
        })?),
    };
    Ok(crate::store::Page { after, limit })
}
