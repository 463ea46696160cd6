//! The start page and the liveness and readiness probes; no login needed.

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{AppError, AppResult};
use super::AppState;

/// The start page (HTML, not part of the API document).
pub fn start_page() -> Router<AppState> {
    Router::new().route("/", get(index))
}

/// The probes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// What `haven serve` tells people to open: says where the API is until the web UI
/// exists. Static, so it shows no data and needs no login.
const INDEX_HTML: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Haven</title>
</head>
<body>
<main>
<h1>Haven</h1>
<p>The Haven API is running under <code>/api/v2/</code>. The web interface is not built yet. To log in, send <code>POST /api/v2/auth/login</code> with a JSON body <code>{"email": "…", "password": "…"}</code>; the answer holds a token to send with every request as <code>Authorization: Bearer TOKEN</code>.</p>
</main>
</body>
</html>
"#;

/// The start page (`Html` answers `text/html; charset=utf-8`).
async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "OK")))]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "OK"), (status = 500, description = "The database does not answer")))]
async fn readyz(State(state): State<AppState>) -> AppResult<Json<Value>> {
    state
        .store
        .ping()
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("database not reachable: {e}")))?;
    Ok(Json(
        json!({"status": "ready", "database": state.store.backend()}),
    ))
}
