//! Recurring schedules (SPEC 5 and 10): `/api/v2/bulk/schedules`. A schedule holds an
//! export, update or delete with its options, validated like a one-off request, and
//! creates one ordinary operation per occurrence (see `engine::recurring`).

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{
    bool_option, delete_parameters, export_parameters, update_parameters, DELETE_OPTIONS,
    EXPORT_OPTIONS, UPDATE_OPTIONS,
};
use crate::domain::operation::{Operation, OperationType};
use crate::domain::permission::Permission;
use crate::domain::schedule::{self, Missed, Schedule, ScheduledOperation};
use crate::domain::{new_id, now, FieldError};
use crate::http::error::{AppError, AppResult};
use crate::http::extract::{perm, AuthUser, JsonBody, PathId, Require};
use crate::http::{page_from_query, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(pause))
        .routes(routes!(resume))
}

/// Operations of a schedule shown with it.
const SHOWN_OPERATIONS: i64 = 20;

/// A schedule as the API shows it (its operation's options unsealed: the caller is of
/// the organization and may read its operations).
fn schedule_json(state: &AppState, s: &Schedule) -> Value {
    let options = state
        .engine
        .keyring
        .open(&s.sealed_operation, &schedule::operation_aad(s.id))
        .ok()
        .and_then(|plain| serde_json::from_slice::<ScheduledOperation>(&plain).ok())
        .map(|o| o.options)
        .unwrap_or(Value::Null);
    json!({
        "id": s.id,
        "name": s.name,
        "cron": s.cron,
        "timezone": s.timezone,
        "operation": options,
        "enabled": s.enabled,
        "missed": s.missed.as_str(),
        "next_run_at": s.next_run_at.as_ref().map(crate::domain::rfc3339),
        "user_id": s.user_id,
        "created_at": crate::domain::rfc3339(&s.created_at),
        "updated_at": crate::domain::rfc3339(&s.updated_at),
    })
}

/// A validated schedule body.
struct Valid {
    name: String,
    cron: String,
    timezone: String,
    op_type: OperationType,
    operation: ScheduledOperation,
    enabled: bool,
    missed: Missed,
}

fn text_field<'a>(
    body: &'a Map<String, Value>,
    key: &str,
    max: usize,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match body.get(key) {
        Some(Value::String(text))
            if !text.trim().is_empty() && text.chars().count() <= max && !text.contains('\0') =>
        {
            Some(text)
        }
        Some(Value::String(_)) => {
            errors.push(FieldError::new(
                key,
                "invalid_value",
                &format!("must be 1 to {max} characters"),
            ));
            None
        }
        None | Some(Value::Null) => {
            errors.push(FieldError::new(key, "required", "is required"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(key, "invalid_type", "must be a string"));
            None
        }
    }
}

/// Checks a schedule body; the operation's options as for a one-off request of its
/// type (errors name `operation.<field>`), without `scheduled_at` or `depends_on`.
fn validate(body: &Map<String, Value>) -> Result<Valid, Vec<FieldError>> {
    let mut errors = Vec::new();
    for key in body.keys() {
        if !["name", "cron", "timezone", "operation", "enabled", "missed"].contains(&key.as_str()) {
            errors.push(FieldError::new(
                key,
                "unknown_field",
                "is not a field of a schedule",
            ));
        }
    }
    let name = text_field(body, "name", 200, &mut errors).map(str::to_string);
    let cron =
        text_field(body, "cron", 100, &mut errors).and_then(|c| match schedule::parse_cron(c) {
            Ok(_) => Some(c.trim().to_string()),
            Err(message) => {
                errors.push(FieldError::new("cron", "invalid_cron", &message));
                None
            }
        });
    let timezone = match body.get("timezone") {
        None | Some(Value::Null) => Some("UTC".to_string()),
        Some(Value::String(tz)) => match schedule::parse_zone(tz) {
            Ok(_) => Some(tz.clone()),
            Err(message) => {
                errors.push(FieldError::new("timezone", "invalid_timezone", &message));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new(
                "timezone",
                "invalid_type",
                "must be a string",
            ));
            None
        }
    };
    let missed = match body.get("missed") {
        None | Some(Value::Null) => Missed::Skip,
        Some(Value::String(m)) => Missed::parse(m).unwrap_or_else(|| {
            errors.push(FieldError::new(
                "missed",
                "invalid_enum",
                "must be skip or run_once",
            ));
            Missed::Skip
        }),
        Some(_) => {
            errors.push(FieldError::new(
                "missed",
                "invalid_enum",
                "must be skip or run_once",
            ));
            Missed::Skip
        }
    };
    let enabled = bool_option(body, "enabled", true, &mut errors);
    let operation = match body.get("operation") {
        Some(Value::Object(op)) => validate_operation(op, &mut errors),
        None | Some(Value::Null) => {
            errors.push(FieldError::new(
                "operation",
                "required",
                "is required: {\"type\": \"export\", ...options}",
            ));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(
                "operation",
                "invalid_type",
                "must be an object",
            ));
            None
        }
    };
    match (name, cron, timezone, operation) {
        (Some(name), Some(cron), Some(timezone), Some((op_type, operation)))
            if errors.is_empty() =>
        {
            Ok(Valid {
                name,
                cron,
                timezone,
                op_type,
                operation,
                enabled,
                missed,
            })
        }
        _ => Err(errors),
    }
}

fn validate_operation(
    op: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Option<(OperationType, ScheduledOperation)> {
    let op_type = match op.get("type").and_then(Value::as_str) {
        Some("export") => OperationType::Export,
        Some("update") => OperationType::Update,
        Some("delete") => OperationType::Delete,
        _ => {
            errors.push(FieldError::new(
                "operation.type",
                "invalid_enum",
                "must be export, update or delete",
            ));
            return None;
        }
    };
    let allowed = match op_type {
        OperationType::Export => EXPORT_OPTIONS,
        OperationType::Update => UPDATE_OPTIONS,
        _ => DELETE_OPTIONS,
    };
    let mut options = op.clone();
    options.remove("type");
    let mut own = Vec::new();
    for key in options.keys() {
        if !allowed.contains(&key.as_str()) && key != "email_notification" && key != "dry_run" {
            own.push(FieldError::new(
                key,
                "unknown_field",
                "is not an option of a scheduled operation of this type",
            ));
        }
    }
    let email_notification = bool_option(&options, "email_notification", true, &mut own);
    let dry_run = bool_option(&options, "dry_run", false, &mut own);
    let parameters = match op_type {
        OperationType::Export => export_parameters(&options, &mut own),
        OperationType::Update => update_parameters(&options, &mut own),
        _ => delete_parameters(&options, &mut own),
    };
    let ok = own.is_empty();
    errors.extend(own.into_iter().map(|mut e| {
        e.field = format!("operation.{}", e.field);
        e
    }));
    let parameters = parameters.filter(|_| ok)?;
    Some((
        op_type,
        ScheduledOperation {
            parameters,
            email_notification,
            dry_run,
            options: Value::Object(op.clone()),
        },
    ))
}

/// The caller may make (or change) a schedule of this type: the same permission as a
/// one-off request of it.
fn may_schedule(caller: &AuthUser, op_type: OperationType) -> AppResult<()> {
    let needed = Permission::to_schedule(op_type);
    if caller.user.role.has(needed) {
        Ok(())
    } else {
        Err(AppError::Forbidden(needed.as_str()))
    }
}

/// Changing someone else's schedule needs `org.admin` (SPEC 2).
fn may_change(caller: &AuthUser, s: &Schedule) -> AppResult<()> {
    if s.user_id != caller.user.id && !caller.user.role.has(Permission::OrgAdmin) {
        return Err(AppError::Forbidden("org.admin"));
    }
    may_schedule(caller, s.operation_type)
}

fn next_run(
    cron: &str,
    timezone: &str,
    enabled: bool,
) -> AppResult<Option<chrono::DateTime<chrono::Utc>>> {
    if !enabled {
        return Ok(None);
    }
    let cron = schedule::parse_cron(cron)
        .map_err(|m| AppError::invalid_field("cron", "invalid_cron", &m))?;
    let zone = schedule::parse_zone(timezone)
        .map_err(|m| AppError::invalid_field("timezone", "invalid_timezone", &m))?;
    Ok(schedule::next_occurrence(&cron, zone, now()))
}

fn seal(state: &AppState, id: Uuid, operation: &ScheduledOperation) -> AppResult<Vec<u8>> {
    let plain = serde_json::to_vec(operation).map_err(|e| AppError::Internal(e.into()))?;
    Ok(state
        .engine
        .keyring
        .seal(&plain, &schedule::operation_aad(id)))
}

/// Creates a recurring schedule.
#[utoipa::path(post, path = "/api/v2/bulk/schedules", tag = "schedules", request_body(content = crate::http::openapi::bodies::ScheduleIn, content_type = "application/json"), security(("bearer" = ["bulk.read"])), responses((status = 201, description = "Created"), (status = 422, description = "Invalid input"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn create(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkRead>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> AppResult<impl IntoResponse> {
    let valid = validate(&body).map_err(AppError::invalid)?;
    may_schedule(&caller, valid.op_type)?;
    let id = new_id();
    let at = now();
    let s = Schedule {
        id,
        organization_id: caller.org(),
        user_id: caller.user.id,
        next_run_at: next_run(&valid.cron, &valid.timezone, valid.enabled)?,
        sealed_operation: seal(&state, id, &valid.operation)?,
        name: valid.name,
        cron: valid.cron,
        timezone: valid.timezone,
        operation_type: valid.op_type,
        enabled: valid.enabled,
        missed: valid.missed,
        created_at: at,
        updated_at: at,
    };
    let audit = caller.actor().entry(
        "schedule.create",
        "bulk_schedule",
        Some(id.to_string()),
        "success",
        json!({"type": s.operation_type.as_str(), "cron": s.cron, "timezone": s.timezone}),
    );
    state.store.create_schedule(&s, audit).await?;
    Ok((StatusCode::CREATED, Json(schedule_json(&state, &s))))
}

/// The organization's schedules, newest first.
#[utoipa::path(get, path = "/api/v2/bulk/schedules", tag = "schedules", params(("limit" = Option<i64>, Query, description = "Page size, 1 to 200"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")), security(("bearer" = ["bulk.read"])), responses((status = 200, description = "OK"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn list(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkRead>,
    Query(query): Query<BTreeMap<String, String>>,
) -> AppResult<Json<Value>> {
    let page = page_from_query(&query)?;
    let items = state.store.list_schedules(caller.org(), &page).await?;
    let next_cursor = crate::http::next_cursor(&items, page.limit, |s| s.id);
    Ok(Json(json!({
        "schedules": items.iter().map(|s| schedule_json(&state, s)).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}

async fn find(state: &AppState, org: Uuid, id: Uuid) -> AppResult<Schedule> {
    state
        .store
        .get_schedule(org, id)
        .await?
        .ok_or(AppError::NotFound("schedule"))
}

/// One schedule with its latest operations.
#[utoipa::path(get, path = "/api/v2/bulk/schedules/{id}", tag = "schedules", params(("id" = Uuid, Path, description = "The id")), security(("bearer" = ["bulk.read"])), responses((status = 200, description = "OK"), (status = 404, description = "No such id in your organization"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn show(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkRead>,
    PathId(id): PathId,
) -> AppResult<Json<Value>> {
    let s = find(&state, caller.org(), id).await?;
    let ops = state
        .store
        .schedule_operations(caller.org(), id, SHOWN_OPERATIONS)
        .await?;
    let mut shown = schedule_json(&state, &s);
    shown["operations"] = json!(ops.iter().map(Operation::to_json).collect::<Vec<_>>());
    Ok(Json(shown))
}

/// Replaces a schedule's name, cron, zone, operation, `enabled` and `missed`.
#[utoipa::path(put, path = "/api/v2/bulk/schedules/{id}", tag = "schedules", params(("id" = Uuid, Path, description = "The id")), request_body(content = crate::http::openapi::bodies::ScheduleIn, content_type = "application/json"), security(("bearer" = ["bulk.read"])), responses((status = 200, description = "OK"), (status = 404, description = "No such id in your organization"), (status = 422, description = "Invalid input"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn update(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkRead>,
    PathId(id): PathId,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> AppResult<Json<Value>> {
    let current = find(&state, caller.org(), id).await?;
    may_change(&caller, &current)?;
    let valid = validate(&body).map_err(AppError::invalid)?;
    may_schedule(&caller, valid.op_type)?;
    let s = Schedule {
        next_run_at: next_run(&valid.cron, &valid.timezone, valid.enabled)?,
        sealed_operation: seal(&state, id, &valid.operation)?,
        name: valid.name,
        cron: valid.cron,
        timezone: valid.timezone,
        operation_type: valid.op_type,
        enabled: valid.enabled,
        missed: valid.missed,
        updated_at: now(),
        ..current
    };
    let audit = caller.actor().entry(
        "schedule.update",
        "bulk_schedule",
        Some(id.to_string()),
        "success",
        json!({"type": s.operation_type.as_str(), "cron": s.cron, "timezone": s.timezone, "enabled": s.enabled}),
    );
    if !state.store.update_schedule(&s, audit).await? {
        return Err(AppError::NotFound("schedule"));
    }
    Ok(Json(schedule_json(&state, &s)))
}

/// Deletes a schedule (its operations stay).
#[utoipa::path(delete, path = "/api/v2/bulk/schedules/{id}", tag = "schedules", params(("id" = Uuid, Path, description = "The id")), security(("bearer" = ["bulk.read"])), responses((status = 204, description = "Deleted"), (status = 404, description = "No such id in your organization"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn remove(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkRead>,
    PathId(id): PathId,
) -> AppResult<StatusCode> {
    let current = find(&state, caller.org(), id).await?;
    may_change(&caller, &current)?;
    let audit = caller.actor().entry(
        "schedule.delete",
        "bulk_schedule",
        Some(id.to_string()),
        "success",
        json!({}),
    );
    if !state.store.delete_schedule(caller.org(), id, audit).await? {
        return Err(AppError::NotFound("schedule"));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn set_enabled(
    state: &AppState,
    caller: &AuthUser,
    id: Uuid,
    enabled: bool,
) -> AppResult<Json<Value>> {
    let current = find(state, caller.org(), id).await?;
    may_change(caller, &current)?;
    let s = Schedule {
        enabled,
        // Resumed: from the next occurrence on; those passed while paused are skipped.
        next_run_at: next_run(&current.cron, &current.timezone, enabled)?,
        updated_at: now(),
        ..current
    };
    let action = if enabled {
        "schedule.resume"
    } else {
        "schedule.pause"
    };
    let audit = caller.actor().entry(
        action,
        "bulk_schedule",
        Some(id.to_string()),
        "success",
        json!({}),
    );
    if !state.store.update_schedule(&s, audit).await? {
        return Err(AppError::NotFound("schedule"));
    }
    Ok(Json(schedule_json(state, &s)))
}

/// Pauses a schedule: no operation until it is resumed.
#[utoipa::path(post, path = "/api/v2/bulk/schedules/{id}/pause", tag = "schedules", params(("id" = Uuid, Path, description = "The id")), security(("bearer" = ["bulk.read"])), responses((status = 200, description = "OK"), (status = 404, description = "No such id in your organization"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn pause(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkRead>,
    PathId(id): PathId,
) -> AppResult<Json<Value>> {
    set_enabled(&state, &caller, id, false).await
}

/// Resumes a schedule from its next occurrence.
#[utoipa::path(post, path = "/api/v2/bulk/schedules/{id}/resume", tag = "schedules", params(("id" = Uuid, Path, description = "The id")), security(("bearer" = ["bulk.read"])), responses((status = 200, description = "OK"), (status = 404, description = "No such id in your organization"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn resume(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkRead>,
    PathId(id): PathId,
) -> AppResult<Json<Value>> {
    set_enabled(&state, &caller, id, true).await
}
