//! The liveness and readiness probes; no login needed. (`GET /` is the web UI's.)

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{AppError, AppResult};
use super::AppState;

/// The probes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "OK")))]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "OK"), (status = 503, description = "The database does not answer")))]
async fn readyz(State(state): State<AppState>) -> AppResult<Json<Value>> {
    // 503, not 500: a load balancer takes the process out of rotation until the
    // database is back, and nothing is wrong with the request. The cause goes to the
    // log, not to an unauthenticated caller.
    // Bounded: with the server gone, a new connection waits for the pool's acquire
    // timeout (30 s), far longer than a probe waits.
    let ping = tokio::time::timeout(std::time::Duration::from_secs(3), state.store.ping()).await;
    let failure = match ping {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer within 3 s".to_string()),
    };
    if let Some(e) = failure {
        tracing::warn!(error = %e, "readiness check: the database does not answer");
        return Err(AppError::ServiceUnavailable {
            message: "not ready: the database does not answer".into(),
            retry_after_secs: 5,
        });
    }
    Ok(Json(
        json!({"status": "ready", "database": state.store.backend()}),
    ))
}

/// `GET /metrics` (SPEC 9): Prometheus/OpenMetrics text, without login unless
/// `--metrics-token` is set. Outside the OpenAPI document: it is for the scraper.
pub fn metrics_route() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> AppResult<axum::response::Response> {
    use axum::response::IntoResponse;
    if let Some(expected) = &state.config.metrics_token {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared without an early exit on the first differing byte.
        let matches = given.is_some_and(|g| {
            g.len() == expected.len()
                && g.bytes()
                    .zip(expected.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !matches {
            return Err(AppError::Unauthorized);
        }
    }
    let (counts, due, waiting) = state.store.queue_counts(crate::domain::now()).await?;
    state.engine.metrics.set_queue(&counts, due, waiting);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.engine.metrics.encode(),
    )
        .into_response())
}

/// Counts each request by method, route pattern and status (the matched route, so no
/// id or other value from the path reaches the metrics).
pub async fn count_requests(
    State(state): State<AppState>,
    route: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = request.method().as_str().to_string();
    let route = route
        .map(|r| r.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    state
        .engine
        .metrics
        .http_requests
        .get_or_create(&crate::metrics::RouteLabel {
            method,
            route,
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}
