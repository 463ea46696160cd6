//! `GET /api/v2/audit` and `GET /api/v2/audit/verify` (permission `audit.read`).

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::AppResult;
use super::extract::{perm, Require};
use super::{page_from_query, AppState};
use crate::domain::rfc3339;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(verify))
}

/// The organization's audit entries, newest first.
#[utoipa::path(get, path = "/api/v2/audit", tag = "audit", params(("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)), security(("bearer" = ["audit.read"])), responses((status = 200, description = "OK"), (status = 422, description = "Invalid input"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn list(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::AuditRead>,
    Query(query): Query<BTreeMap<String, String>>,
) -> AppResult<Json<Value>> {
    let page = page_from_query(&query)?;
    let entries = state.store.list_audit(caller.org(), &page).await?;
    let next_cursor = (entries.len() as i64 == page.limit)
        .then(|| entries.last().map(|e| e.id.to_string()))
        .flatten();
    let events: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "id": e.id, "seq": e.seq, "occurred_at": rfc3339(&e.occurred_at),
                "user_id": e.user_id, "organization_id": e.organization_id, "action": e.action,
                "resource_type": e.resource_type, "resource_id": e.resource_id,
                "operation_id": e.operation_id, "client_addr": e.client_addr,
                "outcome": e.outcome,
                "details": serde_json::from_str::<Value>(&e.details).unwrap_or(Value::Null),
                "hash": e.hash,
            })
        })
        .collect();
    Ok(Json(json!({"events": events, "next_cursor": next_cursor})))
}

/// Verifies the organization's audit chain.
#[utoipa::path(get, path = "/api/v2/audit/verify", tag = "audit", security(("bearer" = ["audit.read"])), responses((status = 200, description = "OK"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn verify(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::AuditRead>,
) -> AppResult<Json<Value>> {
    let keys = crate::audit::AuditKeys::from_keyring(&state.engine.keyring);
    let result = crate::audit::verify(state.store.as_ref(), caller.org(), &keys, None).await?;
    Ok(Json(json!({
        "intact": result.broken.is_none(),
        "entries_checked": result.entries_checked,
        "unkeyed_entries": result.unkeyed_entries,
        "head": result.head,
        "broken": result.broken,
    })))
}
