//! The liveness and readiness probes; no login needed. (`GET /` is the web UI's.)

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::{AppError, AppResult};
use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The process is alive.
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers.
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
