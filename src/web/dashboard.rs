//! The operations dashboard (scheduled, running, finished), one operation's page (the
//! link in notification emails), and the buttons: cancel, roll back, download, error
//! report. The page's script keeps it live over the WebSocket; a status change fetches
//! the operation's row from `/operations/{id}/row`, so its buttons follow the same rules.

use std::collections::{HashMap, HashSet};

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use serde_json::{json, Value};
use uuid::Uuid;

use super::forms::Submitted;
use super::forward::Call;
use super::session::WebUser;
use super::{page_context, view, with, Web};
use crate::domain::operation::{Operation, OperationType, Parameters, Status};
use crate::http::extract::PathId;
use crate::http::AppState;
use crate::store::Page;

/// Rows per dashboard section (a slow connection gets a small page).
const SECTION_ROWS: i64 = 50;
/// Finished operations shown.
const FINISHED_ROWS: usize = 25;

/// The organization's users by id, for "who" (an email, not patient data).
pub async fn user_emails(state: &AppState, org: Uuid) -> HashMap<Uuid, String> {
    state
        .store
        .list_users(org)
        .await
        .map(|users| users.into_iter().map(|u| (u.id, u.email)).collect())
        .unwrap_or_default()
}

fn page(limit: i64) -> Page {
    Page { after: None, limit }
}

/// The three sections' operations.
async fn sections(
    state: &AppState,
    org: Uuid,
) -> Result<(Vec<Operation>, Vec<Operation>, Vec<Operation>), crate::store::StoreError> {
    let mut scheduled = state.store.list_scheduled(org).await?;
    scheduled.truncate(SECTION_ROWS as usize);
    let mut running = state
        .store
        .list_operations(org, Some(Status::Processing), None, &page(SECTION_ROWS))
        .await?;
    let mut finished = Vec::new();
    for status in [
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
        Status::RolledBack,
    ] {
        finished.extend(
            state
                .store
                .list_operations(org, Some(status), None, &page(FINISHED_ROWS as i64))
                .await?,
        );
    }
    // Newest first (ids are UUID v7, so by creation time).
    finished.sort_by_key(|op| std::cmp::Reverse(op.id));
    finished.truncate(FINISHED_ROWS);
    // The lists were read one after the other: an operation that moved on meanwhile is
    // in two of them; the later read is the newer state.
    let later: HashSet<Uuid> = finished.iter().map(|op| op.id).collect();
    running.retain(|op| !later.contains(&op.id));
    let later: HashSet<Uuid> = later
        .into_iter()
        .chain(running.iter().map(|op| op.id))
        .collect();
    scheduled.retain(|op| !later.contains(&op.id));
    Ok((scheduled, running, finished))
}

/// A notice after an action, chosen by code (no free text in URLs).
fn notice(code: Option<&String>) -> Option<&'static str> {
    Some(match code?.as_str() {
        "scheduled" => "The operation was scheduled. It is highlighted below.",
        "cancelled" => "The operation was cancelled.",
        "cancelling" => {
            "Cancelling: the operation stops after its current chunk and undoes what it wrote."
        }
        "rollback" => "The rollback was started. It is highlighted below.",
        _ => return None,
    })
}

pub async fn dashboard(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    user: WebUser,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    render_dashboard(&state, &web, &user, &query, None).await
}

async fn render_dashboard(
    state: &AppState,
    web: &Web,
    user: &WebUser,
    query: &HashMap<String, String>,
    error: Option<(StatusCode, String)>,
) -> Response {
    let org = user.caller.org();
    // Read before the operations: the script asks the WebSocket for every event after
    // this one, so a change between this read and its connection is not missed.
    let last_event = state.store.latest_event_id(org).await.ok().flatten();
    let (scheduled, running, finished) = match sections(state, org).await {
        Ok(s) => s,
        Err(e) => return crate::http::error::AppError::from(e).into_response(),
    };
    let emails = user_emails(state, org).await;
    let rows = |ops: &[Operation]| -> Vec<Value> {
        ops.iter()
            .map(|op| view::operation(op, user, &state.config, &emails))
            .collect()
    };
    let highlight = query.get("highlight").and_then(|h| Uuid::parse_str(h).ok());
    let ctx = page_context(state, user, "dashboard").await;
    let (status, error) = match error {
        Some((status, message)) => (status, Some(message)),
        None => (StatusCode::OK, None),
    };
    web.templates.render_with(
        status,
        "dashboard.html",
        with(
            ctx,
            json!({
                "scheduled": rows(&scheduled),
                "running": rows(&running),
                "finished": rows(&finished),
                "highlight": highlight,
                "last_event": last_event,
                "notice": notice(query.get("notice")),
                "error": error,
            }),
        ),
    )
}

async fn find(state: &AppState, user: &WebUser, id: Uuid) -> Result<Option<Operation>, Response> {
    state
        .store
        .get_operation(user.caller.org(), id)
        .await
        .map_err(|e| crate::http::error::AppError::from(e).into_response())
}

/// One row of the dashboard, for the script to put in place after a status change.
pub async fn operation_row(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    user: WebUser,
    PathId(id): PathId,
) -> Response {
    let op = match find(&state, &user, id).await {
        Ok(Some(op)) => op,
        Ok(None) => return StatusCode::NOT_FOUND.into_response(),
        Err(r) => return r,
    };
    let emails = user_emails(&state, user.caller.org()).await;
    let row = view::operation(&op, &user, &state.config, &emails);
    web.templates
        .render("op_row.html", json!({"op": row, "csrf": user.csrf}))
}

/// A filter's value as the operation page shows it: lists of identifiers by count.
fn filters_view(filters: &crate::domain::filters::PatientFilters) -> Vec<Value> {
    let value = serde_json::to_value(filters).unwrap_or(Value::Null);
    let mut out = Vec::new();
    if let Some(map) = value.as_object() {
        for (name, v) in map {
            let shown = match v {
                Value::Array(items) => format!("{} given (not shown)", items.len()),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push(json!({"name": name, "value": shown}));
        }
    }
    out
}

fn targets_view(targets: &crate::domain::operation::Targets) -> Value {
    match targets {
        crate::domain::operation::Targets::PatientIds(ids) => {
            json!({"ids": ids.len(), "filters": []})
        }
        crate::domain::operation::Targets::Filters(f) => {
            json!({"ids": null, "filters": filters_view(f)})
        }
    }
}

/// The parameters of an operation without patient data: options, field and filter
/// names, counts of listed ids; never changed values, UNHCR numbers or file contents.
fn parameters_view(state: &AppState, op: &Operation) -> Value {
    let opened = state
        .engine
        .keyring
        .open(&op.parameters, &crate::engine::parameters_aad(op.id))
        .ok()
        .and_then(|p| serde_json::from_slice::<Parameters>(&p).ok());
    let Some(params) = opened else {
        return json!({"unreadable": true});
    };
    match params {
        Parameters::Import {
            field_mapping,
            mode,
            on_error,
            date_format,
            size_bytes,
            ..
        } => json!({
            "kind": "import",
            "mode": mode, "on_error": on_error, "date_format": date_format,
            "size_bytes": size_bytes,
            "mapping": field_mapping.map(|m| m.into_iter().map(|(c, f)| json!({"column": c, "field": f})).collect::<Vec<_>>()),
        }),
        Parameters::Export {
            format,
            fields,
            filters,
            include_deleted,
        } => json!({
            "kind": "export", "format": format.as_str(), "fields": fields,
            "filters": filters_view(&filters), "include_deleted": include_deleted,
        }),
        Parameters::Update {
            targets,
            changes,
            create_backup,
        } => json!({
            "kind": "update", "targets": targets_view(&targets),
            "changed_fields": changes.keys().collect::<Vec<_>>(),
            "create_backup": create_backup,
        }),
        Parameters::Delete { targets } => {
            json!({"kind": "delete", "targets": targets_view(&targets)})
        }
        Parameters::Rollback {
            target_operation_id,
            force,
        } => json!({"kind": "rollback", "target": target_operation_id, "force": force}),
    }
}

/// An operation's whole story: parameters, progress, result, errors, audit trail.
pub async fn operation_page(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    user: WebUser,
    PathId(id): PathId,
) -> Response {
    let org = user.caller.org();
    let last_event = state.store.latest_event_id(org).await.ok().flatten();
    let op = match find(&state, &user, id).await {
        Ok(Some(op)) => op,
        Ok(None) => {
            return super::error_page(
                &state,
                &web,
                &user,
                StatusCode::NOT_FOUND,
                "No operation of your organization has this id.",
            )
            .await
        }
        Err(r) => return r,
    };
    let emails = user_emails(&state, org).await;
    let row = view::operation(&op, &user, &state.config, &emails);
    let errors = state.store.row_errors(op.id, 20).await.unwrap_or_default();
    let trail = state
        .store
        .operation_trail(org, op.id)
        .await
        .unwrap_or_default();
    let trail: Vec<Value> = trail
        .iter()
        .map(|e| {
            json!({
                "at": view::time(&e.occurred_at, user.tz),
                "action": e.action,
                "outcome": e.outcome,
                "who": e.user_id.map(|u| emails.get(&u).cloned().unwrap_or_else(|| "another user".into())),
            })
        })
        .collect();
    let conflicts = op
        .result
        .as_ref()
        .and_then(|r| r.get("conflicts"))
        .and_then(Value::as_array)
        .map(|a| a.len())
        .unwrap_or(0);
    let ctx = page_context(&state, &user, "dashboard").await;
    web.templates.render(
        "operation.html",
        with(
            ctx,
            json!({
                "op": row,
                "params": parameters_view(&state, &op),
                "row_errors": errors,
                "trail": trail,
                "conflicts": conflicts,
                "last_event": last_event,
            }),
        ),
    )
}

/// Cancels through the API, then back to the dashboard with a notice (or the API's
/// refusal shown on the dashboard).
pub async fn cancel(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    PathId(id): PathId,
    Submitted { user, .. }: Submitted,
) -> Response {
    let answer = web
        .api
        .call(
            Call::new(Method::POST, format!("/api/v2/bulk-operations/{id}/cancel")).as_user(&user),
        )
        .await;
    if answer.status == StatusCode::OK {
        let code = if answer.body["status"] == "cancelled" {
            "cancelled"
        } else {
            "cancelling"
        };
        return Redirect::to(&format!("/?notice={code}&highlight={id}")).into_response();
    }
    let refusal = Some((answer.status, answer.message()));
    render_dashboard(&state, &web, &user, &HashMap::new(), refusal).await
}

/// Starts a rollback through the API (the endpoint of the target's type).
pub async fn rollback(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    PathId(id): PathId,
    Submitted { user, form }: Submitted,
) -> Response {
    let kind = match find(&state, &user, id).await {
        Ok(Some(op)) => op.op_type,
        Ok(None) => OperationType::Rollback,
        Err(r) => return r,
    };
    let kind = match kind {
        OperationType::Import | OperationType::Update | OperationType::Delete => kind.as_str(),
        // The API answers what is wrong (404 or 409) for anything else.
        _ => "import",
    };
    let body = if form.get("force") == Some("true") {
        json!({"force": true})
    } else {
        json!({})
    };
    let answer = web
        .api
        .call(
            Call::new(Method::POST, format!("/api/v2/bulk/{kind}/rollback/{id}"))
                .as_user(&user)
                .json(&body),
        )
        .await;
    if answer.status.is_success() {
        let new_id = answer.body["id"].as_str().unwrap_or_default().to_string();
        return Redirect::to(&format!("/?notice=rollback&highlight={new_id}")).into_response();
    }
    let refusal = Some((answer.status, answer.message()));
    render_dashboard(&state, &web, &user, &HashMap::new(), refusal).await
}

/// The export file, streamed from the API's download endpoint (audited there).
pub async fn download(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    user: WebUser,
    PathId(id): PathId,
) -> Response {
    pass_through(
        &state,
        &web,
        &user,
        Call::new(
            Method::GET,
            format!("/api/v2/bulk-operations/{id}/download"),
        ),
    )
    .await
}

/// The per-row error report as CSV, from the API.
pub async fn error_report(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    user: WebUser,
    PathId(id): PathId,
) -> Response {
    let mut call = Call::new(Method::GET, format!("/api/v2/bulk-operations/{id}/errors"));
    call.accept = Some("text/csv");
    pass_through(&state, &web, &user, call).await
}

/// Hands a file answer of the API to the browser; an error becomes a page.
async fn pass_through(state: &AppState, web: &Web, user: &WebUser, call: Call<'_>) -> Response {
    let response = web.api.raw(call.as_user(user)).await;
    if response.status().is_success() {
        return response;
    }
    let status = response.status();
    let message = match status {
        StatusCode::NOT_FOUND => "This file does not exist (any more): an export can be downloaded for a limited time after it completed.",
        StatusCode::FORBIDDEN => "Your role does not allow this download.",
        _ => "The file could not be read. Try again later.",
    };
    super::error_page(state, web, user, status, message).await
}

/// The scheduled operations a new one may wait for (the forms' dependencies).
pub async fn dependable(state: &AppState, user: &WebUser, chosen: &HashSet<String>) -> Vec<Value> {
    let ops = state
        .store
        .list_scheduled(user.caller.org())
        .await
        .unwrap_or_default();
    let emails = user_emails(state, user.caller.org()).await;
    ops.iter()
        .take(SECTION_ROWS as usize)
        .map(|op| {
            let mut v = view::operation(op, user, &state.config, &emails);
            v["chosen"] = json!(chosen.contains(&op.id.to_string()));
            v
        })
        .collect()
}
