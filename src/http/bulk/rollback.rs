//! The rollback endpoints of SPEC 4.6: the checks that a completed operation may
//! still be rolled back, and one handler per operation type.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{accept, preflight, Common};
use crate::domain::operation::{OperationType, Parameters, Status};
use crate::domain::{new_id, now};
use crate::http::error::{AppError, AppResult};
use crate::http::extract::{perm, AuthUser, PathId, Require};
use crate::http::AppState;

async fn rollback(
    state: AppState,
    caller: AuthUser,
    headers: HeaderMap,
    target_id: Uuid,
    expected: OperationType,
    body: Option<Map<String, Value>>,
) -> AppResult<Response> {
    if let Some(replay) = preflight(&state, &caller, &headers).await? {
        return Ok(replay);
    }
    let target = state
        .store
        .get_operation(caller.org(), target_id)
        .await?
        .ok_or(AppError::NotFound("operation"))?;
    if target.op_type == OperationType::Rollback {
        return Err(AppError::Conflict(
            "a rollback cannot be rolled back: run the original operation again instead".into(),
        ));
    }
    if target.op_type != expected {
        // An import id at the update endpoint, say: no such update exists.
        return Err(AppError::NotFound("operation"));
    }
    let force = body
        .as_ref()
        .and_then(|b| b.get("force"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let conflict = |m: &str| Err(AppError::Conflict(m.to_string()));
    match target.status {
        Status::Completed => {}
        Status::RolledBack => return conflict("this operation was already rolled back"),
        _ => {
            return conflict(
                "only a completed operation can be rolled back; this one did not complete",
            )
        }
    }
    if target.dry_run {
        return conflict("a dry run changed nothing, so there is nothing to roll back");
    }
    let completed = target.completed_at.unwrap_or(target.created_at);
    let window = match expected {
        OperationType::Import => state.config.import_rollback_window,
        _ => state.config.backup_retention,
    };
    if now() - completed > chrono::Duration::from_std(window).unwrap_or(chrono::Duration::hours(24))
    {
        return conflict("the rollback window of this operation has passed");
    }
    let pending = state
        .store
        .list_operations(
            caller.org(),
            None,
            Some(OperationType::Rollback),
            &crate::store::Page {
                after: None,
                limit: 200,
            },
        )
        .await?
        .into_iter()
        .any(|op| op.target_operation_id == Some(target_id) && !op.status.is_final());
    if pending {
        return conflict("a rollback of this operation is already scheduled or running");
    }
    if expected == OperationType::Update {
        let params: Parameters = state
            .engine
            .keyring
            .open(
                &target.parameters,
                &crate::engine::parameters_aad(target.id),
            )
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or_else(|| {
                AppError::Internal(anyhow::anyhow!("parameters of {target_id} unreadable"))
            })?;
        if matches!(
            params,
            Parameters::Update {
                create_backup: false,
                ..
            }
        ) {
            return conflict("this update ran without a backup, so it cannot be rolled back");
        }
    }
    let common = Common {
        scheduled_at: now(),
        timezone: target.timezone.clone(),
        email_notification: target.email_notification,
        depends_on: Vec::new(),
        dry_run: false,
    };
    let params = Parameters::Rollback {
        target_operation_id: target_id,
        force,
    };
    accept(&state, &caller, &headers, common, params, new_id()).await
}

/// An optional JSON body (`{"force": true}`); an empty body means no options.
async fn optional_body(request: Request) -> AppResult<Option<Map<String, Value>>> {
    let bytes = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .map_err(|_| AppError::BadRequest("the body is too large".into()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|_| {
        AppError::BadRequest("the body must be a JSON object such as {\"force\": true}".into())
    })
}

macro_rules! rollback_handler {
    ($name:ident, $kind:expr, $path:literal) => {
        /// Schedules the rollback of a completed operation (202).
        #[utoipa::path(post, path = $path, tag = "bulk",
                    params(("id" = Uuid, Path, description = "The operation to roll back")),
                    request_body(content = Option<crate::http::openapi::bodies::RollbackIn>, content_type = "application/json"),
                    security(("bearer" = ["bulk.rollback"])),
                    responses((status = 202, description = "Rollback scheduled"),
                        (status = 404, description = "No such operation of this type"),
                        (status = 409, description = "It cannot be rolled back"),
                        (status = 401, description = "No valid token"),
                        (status = 403, description = "The role lacks the permission")))]
        pub(super) async fn $name(
            State(state): State<AppState>,
            Require(caller, ..): Require<perm::BulkRollback>,
            PathId(id): PathId,
            headers: HeaderMap,
            request: Request,
        ) -> AppResult<Response> {
            let body = optional_body(request).await?;
            rollback(state, caller, headers, id, $kind, body).await
        }
    };
}

rollback_handler!(
    rollback_import,
    OperationType::Import,
    "/api/v2/bulk/import/rollback/{id}"
);
rollback_handler!(
    rollback_update,
    OperationType::Update,
    "/api/v2/bulk/update/rollback/{id}"
);
rollback_handler!(
    rollback_delete,
    OperationType::Delete,
    "/api/v2/bulk/delete/rollback/{id}"
);
