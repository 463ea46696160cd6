//! The scheduling endpoints of SPEC 4.2 and the rollback endpoints of SPEC 4.6.
//! Requests are validated completely before anything is accepted: a bad option is a
//! 422 now, not a failure at 02:00.
//!
//! This file holds the routes, the options every scheduling request shares and the
//! export, update and delete endpoints; `import` holds the upload and `rollback` the
//! rollback endpoints.

mod import;
mod rollback;
pub(crate) mod schedules;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{AppError, AppResult};
use super::extract::{perm, AuthUser, JsonBody, Require};
use super::AppState;
use crate::domain::filters::PatientFilters;
use crate::domain::operation::{NewOperation, Operation, OperationType, Parameters, Targets};
use crate::domain::patient::{DateFormat, PatientFields, RawValue, SYSTEM_FIELDS};
use crate::domain::{new_id, now, FieldError};
use crate::formats::export::{check_fields, ExportFormat, DEFAULT_EXPORT_FIELDS};
use crate::store::StoreError;

/// Patients one request may name by id; larger selections use filters.
const MAX_TARGET_IDS: usize = 10_000;

/// Operations one operation may depend on.
const MAX_DEPENDENCIES: usize = 100;

/// Fields one export may name (a patient has 28; repeats are refused by `check_fields`).
const MAX_EXPORT_FIELDS: usize = 100;

/// Scheduling requests one user may make in a minute (SPEC 10).
const MAX_SCHEDULES_PER_USER_MINUTE: i64 = 60;

/// Scheduled operations an organization may have waiting (SPEC 10).
const MAX_SCHEDULED_PER_ORG: i64 = 1_000;

pub fn routes() -> OpenApiRouter<AppState> {
    // The upload has its own limit (`--max-upload-bytes`), checked while it streams.
    let (schemas, paths, import) = routes!(import::schedule_import);
    let import = import.layer(axum::extract::DefaultBodyLimit::disable());
    OpenApiRouter::new()
        .routes((schemas, paths, import))
        .routes(routes!(schedule_export))
        .routes(routes!(schedule_update))
        .routes(routes!(schedule_delete))
        .routes(routes!(rollback::rollback_import))
        .routes(routes!(rollback::rollback_update))
        .routes(routes!(rollback::rollback_delete))
        .merge(schedules::routes())
}

/// Options every scheduling request has.
struct Common {
    scheduled_at: DateTime<Utc>,
    timezone: String,
    email_notification: bool,
    depends_on: Vec<Uuid>,
    dry_run: bool,
}

const COMMON_FIELDS: [&str; 5] = [
    "scheduled_at",
    "timezone",
    "email_notification",
    "depends_on",
    "dry_run",
];

pub(crate) fn bool_option(
    body: &Map<String, Value>,
    key: &str,
    default: bool,
    errors: &mut Vec<FieldError>,
) -> bool {
    match body.get(key) {
        None | Some(Value::Null) => default,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(FieldError::new(
                key,
                "invalid_type",
                "must be true or false",
            ));
            default
        }
    }
}

fn parse_common(body: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Common {
    let at = now();
    let scheduled_at = match body.get("scheduled_at") {
        None | Some(Value::Null) => at,
        Some(Value::String(text)) => match DateTime::parse_from_rfc3339(text) {
            Ok(t) => {
                let t = crate::domain::truncate_micros(t.with_timezone(&Utc));
                if t < at - chrono::Duration::seconds(60) {
                    errors.push(FieldError::new(
                        "scheduled_at",
                        "in_past",
                        "is more than 60 seconds in the past",
                    ));
                } else if t > at + chrono::Duration::days(366) {
                    errors.push(FieldError::new(
                        "scheduled_at",
                        "too_far",
                        "is more than 366 days ahead",
                    ));
                }
                t.max(at)
            }
            Err(_) => {
                errors.push(FieldError::new(
                    "scheduled_at",
                    "invalid_timestamp",
                    "must be RFC 3339 with an offset, such as 2026-12-01T02:00:00+03:00",
                ));
                at
            }
        },
        Some(_) => {
            errors.push(FieldError::new(
                "scheduled_at",
                "invalid_type",
                "must be a string",
            ));
            at
        }
    };
    let timezone = match body.get("timezone") {
        None | Some(Value::Null) => "UTC".to_string(),
        Some(Value::String(tz)) if tz.parse::<chrono_tz::Tz>().is_ok() => tz.clone(),
        Some(_) => {
            errors.push(FieldError::new(
                "timezone",
                "invalid_timezone",
                "must be an IANA time zone such as Africa/Nairobi",
            ));
            "UTC".to_string()
        }
    };
    let depends_on = match body.get("depends_on") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() > MAX_DEPENDENCIES => {
            errors.push(too_many("depends_on", MAX_DEPENDENCIES));
            Vec::new()
        }
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| match i.as_str().map(Uuid::parse_str) {
                Some(Ok(id)) => Some(id),
                _ => {
                    errors.push(FieldError::new(
                        "depends_on",
                        "invalid_id",
                        "must be a list of operation ids",
                    ));
                    None
                }
            })
            .collect(),
        Some(_) => {
            errors.push(FieldError::new(
                "depends_on",
                "invalid_type",
                "must be a list of operation ids",
            ));
            Vec::new()
        }
    };
    let mut depends_on = depends_on;
    let mut seen = std::collections::HashSet::new();
    depends_on.retain(|id| seen.insert(*id));
    Common {
        scheduled_at,
        timezone,
        email_notification: bool_option(body, "email_notification", true, errors),
        depends_on,
        dry_run: bool_option(body, "dry_run", false, errors),
    }
}

/// A list option with more than `max` items.
fn too_many(field: &str, max: usize) -> FieldError {
    FieldError::new(field, "too_many", &format!("at most {max} items"))
}

fn reject_unknown(body: &Map<String, Value>, allowed: &[&str], errors: &mut Vec<FieldError>) {
    for key in body.keys() {
        if !COMMON_FIELDS.contains(&key.as_str()) && !allowed.contains(&key.as_str()) {
            errors.push(FieldError::new(
                key,
                "unknown_field",
                "is not an option of this operation",
            ));
        }
    }
}

fn parse_targets(body: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<Targets> {
    match (body.get("patient_ids"), body.get("filters")) {
        (Some(ids), None) => match ids.as_array() {
            Some(items) if items.len() > MAX_TARGET_IDS => {
                errors.push(FieldError::new(
                    "patient_ids",
                    "too_many",
                    &format!("at most {MAX_TARGET_IDS} ids; use filters to target more patients"),
                ));
                None
            }
            Some(items) if !items.is_empty() => {
                let parsed: Option<Vec<Uuid>> = items
                    .iter()
                    .map(|i| i.as_str().and_then(|s| Uuid::parse_str(s).ok()))
                    .collect();
                match parsed {
                    Some(ids) => Some(Targets::PatientIds(ids)),
                    None => {
                        errors.push(FieldError::new(
                            "patient_ids",
                            "invalid_id",
                            "must be a list of patient ids",
                        ));
                        None
                    }
                }
            }
            _ => {
                errors.push(FieldError::new(
                    "patient_ids",
                    "invalid_type",
                    "must be a non-empty list of patient ids",
                ));
                None
            }
        },
        (None, Some(filters)) => match PatientFilters::from_json(filters, "filters") {
            Ok(f) => Some(Targets::Filters(f)),
            Err(e) => {
                errors.extend(e);
                None
            }
        },
        _ => {
            errors.push(FieldError::new(
                "patient_ids",
                "required",
                "give exactly one of patient_ids or filters to say which patients",
            ));
            None
        }
    }
}

/// Checks the `changes` of an update with each field's own rule.
fn parse_changes(body: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Map<String, Value> {
    let mut changes = match (body.get("changes"), body.get("field")) {
        (Some(Value::Object(c)), None) => c.clone(),
        (None, Some(Value::String(field))) => {
            let mut m = Map::new();
            m.insert(
                field.clone(),
                body.get("value").cloned().unwrap_or(Value::Null),
            );
            m
        }
        _ => {
            errors.push(FieldError::new(
                "changes",
                "required",
                "give `changes` (an object of field: new value) or the pair `field` and `value`",
            ));
            return Map::new();
        }
    };
    if changes.is_empty() {
        errors.push(FieldError::new(
            "changes",
            "required",
            "must change at least one field",
        ));
    }
    let today = Utc::now().date_naive();
    let mut probe = PatientFields::new_draft();
    for (field, value) in changes.iter_mut() {
        let name = format!("changes.{field}");
        if SYSTEM_FIELDS.contains(&field.as_str()) {
            errors.push(FieldError::new(
                &name,
                "read_only",
                "is a system field and cannot be changed",
            ));
            continue;
        }
        if matches!(field.as_str(), "given_name" | "family_name" | "gender") && value.is_null() {
            errors.push(FieldError::new(&name, "required", "cannot be cleared"));
            continue;
        }
        let checked = RawValue::from_json(value)
            .map_err(|m| FieldError::new(&name, "invalid_type", m))
            .and_then(|raw| {
                probe
                    .set(field, raw, DateFormat::Iso, today)
                    .map_err(|mut e| {
                        e.field = name.clone();
                        e
                    })
            });
        match checked {
            // Store the normalised value (`F` becomes `female`).
            Ok(()) => *value = probe.get_json(field).unwrap_or(Value::Null),
            Err(e) => errors.push(e),
        }
    }
    changes
}

/// Saves the operation and answers 201 with it.
async fn accept(
    state: &AppState,
    caller: &AuthUser,
    headers: &HeaderMap,
    common: Common,
    params: Parameters,
    id: Uuid,
) -> AppResult<Response> {
    let op_type = params.operation_type();
    for dep in &common.depends_on {
        if state
            .store
            .get_operation(caller.org(), *dep)
            .await?
            .is_none()
        {
            return Err(AppError::invalid_field(
                "depends_on",
                "unknown_operation",
                &format!("no operation {dep} exists in your organization"),
            ));
        }
    }
    if dependencies_have_a_cycle(state, caller.org(), &common.depends_on).await? {
        return Err(AppError::invalid_field(
            "depends_on",
            "cycle",
            "these operations depend on each other in a cycle: none of them could ever start",
        ));
    }
    let sealed = state.engine.keyring.seal(
        &serde_json::to_vec(&params).map_err(|e| AppError::Internal(e.into()))?,
        &crate::engine::parameters_aad(id),
    );
    let op = Operation::scheduled(
        NewOperation {
            id,
            op_type,
            user_id: caller.user.id,
            organization_id: caller.org(),
            scheduled_at: common.scheduled_at,
            parameters: sealed,
            parameters_key_id: state.engine.keyring.active_key_id(),
            timezone: common.timezone,
            email_notification: common.email_notification,
            dry_run: common.dry_run,
            schedule_id: None,
            target_operation_id: match &params {
                Parameters::Rollback {
                    target_operation_id,
                    ..
                } => Some(*target_operation_id),
                _ => None,
            },
            idempotency_key: idempotency_key(headers)?,
            depends_on: common.depends_on,
        },
        now(),
    );
    let mut audit = caller.actor().entry(
        "operation.schedule",
        "bulk_operation",
        Some(id.to_string()),
        "success",
        json!({"type": op_type.as_str(), "dry_run": op.dry_run,
            "scheduled_at": crate::domain::rfc3339(&op.scheduled_at),
            "target_operation_id": op.target_operation_id}),
    );
    audit.operation_id = Some(id);
    match state.store.insert_operation(&op, audit).await {
        Ok(()) => {}
        // A simultaneous request with the same key won the race: answer with its operation.
        Err(StoreError::Duplicate("idempotency_key")) => {
            let key = op.idempotency_key.clone().unwrap_or_default();
            if let Some(first) = state
                .store
                .find_by_idempotency_key(caller.user.id, &key)
                .await?
            {
                return Ok(created(scheduled_status(&first), &first));
            }
            return Err(AppError::Conflict(
                "the Idempotency-Key is in use; retry".into(),
            ));
        }
        Err(StoreError::Duplicate("rollback")) => {
            return Err(AppError::Conflict(
                "a rollback of this operation is already scheduled or running".into(),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    state.engine.wake();
    let status = if op_type == OperationType::Rollback {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    Ok(created(status, &op))
}

/// Whether a cycle is reachable from `roots` in the dependency graph (depth-first, at
/// most a few thousand operations). The API cannot create one, since an operation's
/// dependencies exist before it; a hand-edited database can, and would leave every
/// operation of the cycle waiting forever.
async fn dependencies_have_a_cycle(state: &AppState, org: Uuid, roots: &[Uuid]) -> AppResult<bool> {
    use std::collections::HashMap;
    const LIMIT: usize = 5_000;
    #[derive(PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    let mut marks: HashMap<Uuid, Mark> = HashMap::new();
    let deps_of = |id: Uuid| async move {
        Ok::<_, AppError>(
            state
                .store
                .get_operation(org, id)
                .await?
                .map(|op| op.depends_on)
                .unwrap_or_default(),
        )
    };
    for root in roots {
        if marks.contains_key(root) {
            continue;
        }
        marks.insert(*root, Mark::OnPath);
        let mut path = vec![(*root, deps_of(*root).await?)];
        while let Some((node, pending)) = path.last_mut() {
            let node = *node;
            match pending.pop() {
                None => {
                    marks.insert(node, Mark::Done);
                    path.pop();
                }
                Some(next) => match marks.get(&next) {
                    Some(Mark::OnPath) => return Ok(true),
                    Some(Mark::Done) => {}
                    None => {
                        if marks.len() >= LIMIT {
                            return Ok(false);
                        }
                        marks.insert(next, Mark::OnPath);
                        let deps = deps_of(next).await?;
                        path.push((next, deps));
                    }
                },
            }
        }
    }
    Ok(false)
}

/// The answer to a scheduling request: 201, or 202 for a rollback (SPEC 4.6).
fn scheduled_status(op: &Operation) -> StatusCode {
    if op.op_type == OperationType::Rollback {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    }
}

fn created(status: StatusCode, op: &Operation) -> Response {
    let location = format!("/api/v2/bulk-operations/{}/status", op.id);
    (status, [(header::LOCATION, location)], Json(op.to_json())).into_response()
}

/// The longest `Idempotency-Key` accepted. A longer one is refused rather than cut:
/// two keys that differ only after the cut would otherwise name one operation.
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

fn idempotency_key(headers: &HeaderMap) -> AppResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid =
        |message: &str| AppError::invalid_field("Idempotency-Key", "invalid_value", message);
    let text = value
        .to_str()
        .map_err(|_| invalid("must be visible ASCII text"))?
        .trim();
    if text.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(invalid(&format!(
            "must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )));
    }
    Ok(Some(text.to_string()).filter(|s| !s.is_empty()))
}

/// The earlier operation for a repeated `Idempotency-Key`, and the scheduling limits.
pub(super) async fn preflight(
    state: &AppState,
    caller: &AuthUser,
    headers: &HeaderMap,
) -> AppResult<Option<Response>> {
    if let Some(key) = idempotency_key(headers)? {
        if let Some(op) = state
            .store
            .find_by_idempotency_key(caller.user.id, &key)
            .await?
        {
            if op.created_at > now() - chrono::Duration::hours(24) {
                return Ok(Some(created(scheduled_status(&op), &op)));
            }
            state.store.clear_idempotency_key(op.id).await?;
        }
    }
    let minute_ago = now() - chrono::Duration::seconds(60);
    let (recent, oldest) = state
        .store
        .created_by_user_since(caller.user.id, minute_ago)
        .await?;
    if recent >= MAX_SCHEDULES_PER_USER_MINUTE {
        let free_at = oldest.unwrap_or_else(now) + chrono::Duration::seconds(60);
        return Err(AppError::TooManyRequests {
            message: format!(
                "at most {MAX_SCHEDULES_PER_USER_MINUTE} operations can be scheduled a minute"
            ),
            retry_after_secs: (free_at - now()).num_seconds().clamp(1, 60) as u64,
        });
    }
    if state.store.count_scheduled(caller.org()).await? >= MAX_SCHEDULED_PER_ORG {
        return Err(AppError::TooManyRequests {
            message: format!("your organization has {MAX_SCHEDULED_PER_ORG} operations waiting; wait for some to run"),
            retry_after_secs: 60,
        });
    }
    Ok(None)
}

fn fail_if(errors: Vec<FieldError>) -> AppResult<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(AppError::invalid(errors))
    }
}

/// The options of an export (besides the common ones).
pub(crate) const EXPORT_OPTIONS: &[&str] = &["format", "fields", "filters", "include_deleted"];

/// An export's parameters from its options; what is wrong goes to `errors`.
pub(crate) fn export_parameters(
    body: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Option<Parameters> {
    let format = match body.get("format") {
        None | Some(Value::Null) => ExportFormat::Csv,
        Some(v) => serde_json::from_value(v.clone()).unwrap_or_else(|_| {
            errors.push(FieldError::new(
                "format",
                "invalid_enum",
                "must be one of csv, json, ndjson, xlsx",
            ));
            ExportFormat::Csv
        }),
    };
    let fields: Vec<String> = match body.get("fields") {
        None | Some(Value::Null) => DEFAULT_EXPORT_FIELDS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Some(Value::Array(items)) if items.len() > MAX_EXPORT_FIELDS => {
            errors.push(too_many("fields", MAX_EXPORT_FIELDS));
            Vec::new()
        }
        Some(v) => serde_json::from_value(v.clone()).unwrap_or_else(|_| {
            errors.push(FieldError::new(
                "fields",
                "invalid_type",
                "must be a list of field names",
            ));
            Vec::new()
        }),
    };
    if let Err(e) = check_fields(&fields) {
        errors.extend(e);
    }
    let filters = match body.get("filters") {
        None | Some(Value::Null) => PatientFilters::default(),
        Some(v) => PatientFilters::from_json(v, "filters").unwrap_or_else(|e| {
            errors.extend(e);
            PatientFilters::default()
        }),
    };
    let include_deleted = bool_option(body, "include_deleted", false, errors);
    errors.is_empty().then_some(Parameters::Export {
        format,
        fields,
        filters,
        include_deleted,
    })
}

/// What every JSON scheduling request shares: the replay of a repeated
/// `Idempotency-Key` and the limits, the common options, the type's own options
/// (`parameters`), then `accept`.
async fn schedule_one_off(
    state: &AppState,
    caller: &AuthUser,
    headers: &HeaderMap,
    body: &Map<String, Value>,
    options: &[&str],
    parameters: fn(&Map<String, Value>, &mut Vec<FieldError>) -> Option<Parameters>,
) -> AppResult<Response> {
    if let Some(replay) = preflight(state, caller, headers).await? {
        return Ok(replay);
    }
    let mut errors = Vec::new();
    reject_unknown(body, options, &mut errors);
    let common = parse_common(body, &mut errors);
    let params = parameters(body, &mut errors);
    // Without parameters, `parameters` has said why in `errors`.
    let Some(params) = params.filter(|_| errors.is_empty()) else {
        return Err(AppError::invalid(errors));
    };
    accept(state, caller, headers, common, params, new_id()).await
}

/// Schedules an export.
#[utoipa::path(post, path = "/api/v2/bulk/export/schedule", tag = "bulk", params(("Idempotency-Key" = Option<String>, Header)), request_body(content = crate::http::openapi::bodies::ExportIn, content_type = "application/json"), security(("bearer" = ["bulk.export"])), responses((status = 201, description = "Scheduled"), (status = 422, description = "Invalid input"), (status = 429, description = "Too many scheduling requests"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn schedule_export(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkExport>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> AppResult<Response> {
    schedule_one_off(
        &state,
        &caller,
        &headers,
        &body,
        EXPORT_OPTIONS,
        export_parameters,
    )
    .await
}

/// The options of an update (besides the common ones).
pub(crate) const UPDATE_OPTIONS: &[&str] = &[
    "patient_ids",
    "filters",
    "changes",
    "field",
    "value",
    "create_backup",
    "confirm",
];

/// An update's parameters from its options; what is wrong goes to `errors`.
pub(crate) fn update_parameters(
    body: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Option<Parameters> {
    let targets = parse_targets(body, errors);
    let changes = parse_changes(body, errors);
    let single_patient = matches!(&targets, Some(Targets::PatientIds(ids)) if ids.len() == 1);
    if changes.contains_key("unhcr_number") && !single_patient {
        errors.push(FieldError::new(
            "changes.unhcr_number",
            "duplicate",
            "is unique per patient: change it for one patient at a time (patient_ids with one id)",
        ));
    }
    let create_backup = bool_option(body, "create_backup", true, errors);
    if !create_backup && !bool_option(body, "confirm", false, errors) {
        errors.push(FieldError::new(
            "confirm",
            "required",
            "must be true to update without a backup: such an update cannot be rolled back",
        ));
    }
    let targets = targets.filter(|_| errors.is_empty())?;
    Some(Parameters::Update {
        targets,
        changes,
        create_backup,
    })
}

/// The options of a delete (besides the common ones).
pub(crate) const DELETE_OPTIONS: &[&str] = &["patient_ids", "filters", "confirm"];

/// A delete's parameters from its options; what is wrong goes to `errors`.
pub(crate) fn delete_parameters(
    body: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Option<Parameters> {
    let targets = parse_targets(body, errors);
    if !bool_option(body, "confirm", false, errors) {
        errors.push(FieldError::new(
            "confirm",
            "required",
            "must be true to delete patients",
        ));
    }
    let targets = targets.filter(|_| errors.is_empty())?;
    Some(Parameters::Delete { targets })
}

/// Schedules an update.
#[utoipa::path(post, path = "/api/v2/bulk/update/schedule", tag = "bulk", params(("Idempotency-Key" = Option<String>, Header)), request_body(content = crate::http::openapi::bodies::UpdateIn, content_type = "application/json"), security(("bearer" = ["bulk.update"])), responses((status = 201, description = "Scheduled"), (status = 422, description = "Invalid input"), (status = 429, description = "Too many scheduling requests"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn schedule_update(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkUpdate>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> AppResult<Response> {
    schedule_one_off(
        &state,
        &caller,
        &headers,
        &body,
        UPDATE_OPTIONS,
        update_parameters,
    )
    .await
}

/// Schedules a delete.
#[utoipa::path(post, path = "/api/v2/bulk/delete/schedule", tag = "bulk", params(("Idempotency-Key" = Option<String>, Header)), request_body(content = crate::http::openapi::bodies::DeleteIn, content_type = "application/json"), security(("bearer" = ["bulk.delete"])), responses((status = 201, description = "Scheduled"), (status = 422, description = "Invalid input"), (status = 429, description = "Too many scheduling requests"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn schedule_delete(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkDelete>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> AppResult<Response> {
    schedule_one_off(
        &state,
        &caller,
        &headers,
        &body,
        DELETE_OPTIONS,
        delete_parameters,
    )
    .await
}
