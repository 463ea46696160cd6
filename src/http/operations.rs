//! The monitoring endpoints of SPEC 4.3: lists, status, cancel, error report, download.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{AppError, AppResult};
use super::extract::{perm, PathId, Require};
use super::{page_from_query, AppState};
use crate::blobs::BlobStore;
use crate::domain::now;
use crate::domain::operation::{Operation, OperationType, Status};
use crate::domain::permission::Permission;
use crate::formats::export::spreadsheet_safe;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(stats))
        .routes(routes!(scheduled))
        .routes(routes!(status))
        .routes(routes!(cancel))
        .routes(routes!(errors))
        .routes(routes!(conflicts))
        .routes(routes!(download))
}

fn operations_json(ops: &[Operation]) -> Vec<Value> {
    ops.iter().map(Operation::to_json).collect()
}

/// The organization's operations, newest first.
#[utoipa::path(get, path = "/api/v2/bulk-operations", tag = "operations", params(("status" = Option<String>, Query), ("type" = Option<String>, Query), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)), security(("bearer" = ["bulk.read"])), responses((status = 200, description = "OK"), (status = 422, description = "Invalid input"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn list(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkRead>,
    Query(query): Query<BTreeMap<String, String>>,
) -> AppResult<Json<Value>> {
    let page = page_from_query(&query)?;
    let status = match query.get("status") {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            AppError::invalid_field(
                "status",
                "invalid_enum",
                "must be scheduled, processing, completed, failed, cancelled or rolled_back",
            )
        })?),
    };
    let op_type = match query.get("type") {
        None => None,
        Some(t) => Some(OperationType::parse(t).ok_or_else(|| {
            AppError::invalid_field(
                "type",
                "invalid_enum",
                "must be import, export, update, delete or rollback",
            )
        })?),
    };
    let ops = state
        .store
        .list_operations(caller.org(), status, op_type, &page)
        .await?;
    let next_cursor = (ops.len() as i64 == page.limit)
        .then(|| ops.last().map(|o| o.id.to_string()))
        .flatten();
    Ok(Json(
        json!({"operations": operations_json(&ops), "next_cursor": next_cursor}),
    ))
}

/// The organization's scheduled operations.
#[utoipa::path(get, path = "/api/v2/bulk-operations/scheduled", tag = "operations", security(("bearer" = ["bulk.read"])), responses((status = 200, description = "OK"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn scheduled(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkRead>,
) -> AppResult<Json<Value>> {
    let ops = state.store.list_scheduled(caller.org()).await?;
    Ok(Json(json!({"operations": operations_json(&ops)})))
}

async fn find(state: &AppState, org: uuid::Uuid, id: uuid::Uuid) -> AppResult<Operation> {
    state
        .store
        .get_operation(org, id)
        .await?
        .ok_or(AppError::NotFound("operation"))
}

/// One operation.
#[utoipa::path(get, path = "/api/v2/bulk-operations/{id}/status", tag = "operations", params(("id" = Uuid, Path, description = "The id")), security(("bearer" = ["bulk.read"])), responses((status = 200, description = "OK"), (status = 404, description = "No such id in your organization"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn status(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkRead>,
    PathId(id): PathId,
) -> AppResult<Json<Value>> {
    Ok(Json(find(&state, caller.org(), id).await?.to_json()))
}

/// Cancels an operation; cancelling others' needs `bulk.cancel` too.
#[utoipa::path(post, path = "/api/v2/bulk-operations/{id}/cancel", tag = "operations", params(("id" = Uuid, Path, description = "The id")), security(("bearer" = ["bulk.read"])), responses((status = 200, description = "OK"), (status = 404, description = "No such id in your organization"), (status = 409, description = "It has ended"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn cancel(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkRead>,
    PathId(id): PathId,
) -> AppResult<Json<Value>> {
    let op = find(&state, caller.org(), id).await?;
    if op.user_id != caller.user.id && !caller.user.role.has(Permission::BulkCancel) {
        let entry = caller.actor().entry(
            "permission.denied",
            "bulk_operation",
            Some(id.to_string()),
            "denied",
            json!({"permission": "bulk.cancel"}),
        );
        state.store.append_audit(entry).await?;
        return Err(AppError::Forbidden("bulk.cancel"));
    }
    if op.status.is_final()
        || op.undoing()
        || (op.op_type == OperationType::Rollback && op.attempt > 0)
    {
        return Err(AppError::Conflict(cancel_refusal(&op)));
    }
    let mut audit = caller.actor().entry(
        "operation.cancel",
        "bulk_operation",
        Some(id.to_string()),
        "success",
        json!({"requested_while": op.status.as_str()}),
    );
    audit.operation_id = Some(id);
    let (op, accepted) = state
        .store
        .request_cancel(caller.org(), id, now(), audit)
        .await?
        .ok_or(AppError::NotFound("operation"))?;
    if !accepted {
        // The state changed since it was read above: say what it is now.
        return Err(AppError::Conflict(cancel_refusal(&op)));
    }
    state.engine.wake();
    Ok(Json(op.to_json()))
}

/// Operations an organization's statistics look at, at most.
const STATS_LIMIT: i64 = 100_000;

/// The organization's operations over a window (`?since=`, default the last 24 hours):
/// counts by status and type, average duration and throughput by type.
#[utoipa::path(get, path = "/api/v2/bulk-operations/stats", tag = "operations", params(("since" = Option<String>, Query, description = "RFC 3339; default 24 hours ago")), security(("bearer" = ["bulk.read"])), responses((status = 200, description = "OK"), (status = 422, description = "Invalid input"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn stats(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkRead>,
    Query(query): Query<BTreeMap<String, String>>,
) -> AppResult<Json<Value>> {
    let since = match query.get("since").filter(|s| !s.is_empty()) {
        None => now() - chrono::Duration::hours(24),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|_| {
                AppError::invalid_field(
                    "since",
                    "invalid_timestamp",
                    "must be RFC 3339, such as 2026-12-01T00:00:00Z",
                )
            })?
            .with_timezone(&chrono::Utc),
    };
    let rows = state
        .store
        .operation_stats_rows(caller.org(), since, STATS_LIMIT)
        .await?;
    let mut by_status: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_type: BTreeMap<String, (i64, i64, f64, i64)> = BTreeMap::new();
    for (op_type, status, started, completed, processed) in &rows {
        *by_status.entry(status.clone()).or_default() += 1;
        let entry = by_type.entry(op_type.clone()).or_default();
        entry.0 += 1;
        if let (Some(started), Some(completed), "completed") = (started, completed, status.as_str())
        {
            entry.1 += 1;
            entry.2 += (*completed - *started).num_milliseconds().max(0) as f64 / 1000.0;
            entry.3 += processed;
        }
    }
    let types: serde_json::Map<String, Value> = by_type
        .into_iter()
        .map(|(op_type, (count, done, seconds, rows))| {
            let average = (done > 0).then(|| seconds / done as f64);
            let throughput = (seconds > 0.0).then(|| rows as f64 / seconds);
            (
                op_type,
                json!({"count": count, "completed": done,
                    "average_duration_seconds": average, "rows_per_second": throughput}),
            )
        })
        .collect();
    Ok(Json(json!({
        "since": crate::domain::rfc3339(&since),
        "operations": rows.len(),
        "truncated": rows.len() as i64 == STATS_LIMIT,
        "by_status": by_status,
        "by_type": types,
    })))
}

/// Why a cancel was refused, from the operation as it is now. The store checks the
/// same conditions in the statement that cancels, so a race ends here too.
fn cancel_refusal(op: &Operation) -> String {
    if op.status.is_final() {
        format!(
            "the operation has already ended ({}); only scheduled or running operations can be cancelled",
            op.status.as_str()
        )
    } else if op.op_type == OperationType::Rollback {
        // Stopping a restore half-way would leave a mix of old and new values.
        "a rollback that has started cannot be cancelled; let it finish".into()
    } else if op.undoing() {
        "the operation is already undoing its partial changes; it ends once they are undone".into()
    } else {
        "the operation cannot be cancelled in its current state".into()
    }
}

/// The patients an undo or a rollback left alone because someone changed them after
/// the operation, all of them, paged by patient id (`result.conflicts` holds a sample).
#[utoipa::path(get, path = "/api/v2/bulk-operations/{id}/conflicts", tag = "operations", params(("id" = Uuid, Path, description = "The id"), ("limit" = Option<i64>, Query, description = "Page size, 1 to 200"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")), security(("bearer" = ["bulk.read"])), responses((status = 200, description = "OK"), (status = 404, description = "No such id in your organization"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn conflicts(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkRead>,
    PathId(id): PathId,
    Query(query): Query<BTreeMap<String, String>>,
) -> AppResult<Json<Value>> {
    let page = page_from_query(&query)?;
    let op = find(&state, caller.org(), id).await?;
    let rows = state
        .store
        .conflicts(caller.org(), op.id, page.after, page.limit)
        .await?;
    let next_cursor = super::next_cursor(&rows, page.limit, |c| c.patient_id);
    Ok(Json(json!({
        "conflicts": rows
            .iter()
            .map(|c| json!({"patient_id": c.patient_id, "reason": c.reason}))
            .collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}

/// The per-row error report (JSON, or CSV with `Accept: text/csv`).
#[utoipa::path(get, path = "/api/v2/bulk-operations/{id}/errors", tag = "operations", params(("id" = Uuid, Path, description = "The id")), security(("bearer" = ["bulk.read"])), responses((status = 200, description = "OK"), (status = 404, description = "No such id in your organization"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn errors(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkRead>,
    PathId(id): PathId,
    headers: HeaderMap,
) -> AppResult<Response> {
    let op = find(&state, caller.org(), id).await?;
    let rows = state.store.row_errors(op.id, 1_000_000).await?;
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    if wants_csv {
        let mut out = csv::Writer::from_writer(Vec::new());
        let write = |out: &mut csv::Writer<Vec<u8>>| -> csv::Result<()> {
            out.write_record(["row", "column", "code", "message"])?;
            // Column names come from the uploaded header: neutralised like export cells.
            let safe = |text: &str| spreadsheet_safe("", text.to_string());
            for e in &rows {
                out.write_record([
                    e.row.to_string(),
                    safe(&e.column),
                    safe(&e.code),
                    safe(&e.message),
                ])?;
            }
            out.flush()?;
            Ok(())
        };
        write(&mut out).map_err(|e| AppError::Internal(e.into()))?;
        let bytes = out
            .into_inner()
            .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")))?;
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"haven-errors-{id}.csv\""),
                ),
            ],
            bytes,
        )
            .into_response());
    }
    Ok(Json(json!({"errors": rows})).into_response())
}

/// The export file.
#[utoipa::path(get, path = "/api/v2/bulk-operations/{id}/download", tag = "operations", params(("id" = Uuid, Path, description = "The id")), security(("bearer" = ["bulk.export"])), responses((status = 200, description = "OK"), (status = 404, description = "No such id in your organization"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn download(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkExport>,
    PathId(id): PathId,
) -> AppResult<Response> {
    let op = find(&state, caller.org(), id).await?;
    let (blob, expires_at) = state
        .store
        .output_blob(caller.org(), id)
        .await?
        .ok_or(AppError::NotFound("export file"))?;
    if expires_at < now() {
        return Err(AppError::NotFound("export file"));
    }
    let file = match state.engine.blobs.open(&blob).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AppError::NotFound("export file"))
        }
        Err(e) => return Err(AppError::Internal(e.into())),
    };
    let format = op
        .result
        .as_ref()
        .and_then(|r| r.get("format"))
        .and_then(|f| {
            serde_json::from_value::<crate::formats::export::ExportFormat>(f.clone()).ok()
        })
        .unwrap_or_default();
    let mut audit = caller.actor().entry(
        "operation.download",
        "bulk_operation",
        Some(id.to_string()),
        "success",
        json!({"format": format.as_str()}),
    );
    audit.operation_id = Some(id);
    state.store.audit_operation(audit).await?;
    let stream = state
        .engine
        .keyring
        .decrypt_file_stream(file, BlobStore::aad(&blob));
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"haven-export-{id}.{}\"",
                    format.extension()
                ),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
