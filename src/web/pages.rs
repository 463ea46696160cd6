//! The other pages: notifications with preferences, patients, the audit log (admins),
//! users (admins, read-only) and the recurring schedules (read-only).

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use serde_json::{json, Value};

use super::dashboard::user_emails;
use super::forms::Submitted;
use super::forward::Call;
use super::session::WebUser;
use super::{page_context, view, with, Web};
use crate::domain::permission::Permission;
use crate::http::AppState;
use crate::notify::{default_channels, Channel, EventType};
use crate::store::Page;

/// Items per list page (small pages for slow connections).
const PAGE_ROWS: i64 = 50;

fn cursor(query: &HashMap<String, String>) -> Option<uuid::Uuid> {
    query
        .get("cursor")
        .and_then(|c| uuid::Uuid::parse_str(c).ok())
}

fn store_error(e: crate::store::StoreError) -> Response {
    crate::http::error::AppError::from(e).into_response()
}

pub async fn notifications(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    user: WebUser,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let org = user.caller.org();
    let page = Page {
        after: cursor(&query),
        limit: PAGE_ROWS,
    };
    let items = match state
        .store
        .list_notifications(org, user.caller.user.id, &page)
        .await
    {
        Ok(items) => items,
        Err(e) => return store_error(e),
    };
    let prefs = match state.store.preferences(org, user.caller.user.id).await {
        Ok(p) => p,
        Err(e) => return store_error(e),
    };
    let next = (items.len() as i64 == PAGE_ROWS)
        .then(|| items.last().map(|n| n.id))
        .flatten();
    let list: Vec<Value> = items
        .iter()
        .map(|n| {
            json!({
                "id": n.id,
                "message": n.message,
                "operation_id": n.operation_id,
                "event_type": n.event_type,
                "at": view::time(&n.created_at, user.tz),
                "unread": n.read_at.is_none(),
            })
        })
        .collect();
    let grid: Vec<Value> = EventType::ALL
        .iter()
        .map(|event| {
            let chosen = prefs
                .channels
                .iter()
                .find(|(e, _)| e == event)
                .map(|(_, c)| c.clone())
                .unwrap_or_else(|| default_channels(*event));
            json!({
                "event": event.as_str(),
                "label": event.verb(),
                "channels": Channel::ALL.iter().map(|c| json!({
                    "name": c.as_str(),
                    "checked": chosen.contains(c),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let ctx = page_context(&state, &user, "notifications").await;
    web.templates.render(
        "notifications.html",
        with(
            ctx,
            json!({
                "notifications": list,
                "next_cursor": next,
                "grid": grid,
                "channels": Channel::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "phone_number": prefs.phone_number,
                "saved": query.contains_key("saved"),
            }),
        ),
    )
}

/// Marks one notification (`id`) or all of them read, through the API.
pub async fn notifications_read(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    Submitted { user, form }: Submitted,
) -> Response {
    let path = match form.get("id").and_then(|id| uuid::Uuid::parse_str(id).ok()) {
        Some(id) => format!("/api/v2/notifications/{id}/read"),
        None => "/api/v2/notifications/read-all".to_string(),
    };
    let answer = web
        .api
        .call(Call::new(Method::POST, path).as_user(&user))
        .await;
    if !answer.status.is_success() {
        return super::error_page(&state, &web, &user, answer.status, &answer.message()).await;
    }
    Redirect::to("/notifications").into_response()
}

/// Saves the preferences grid (`pref.EVENT` = channel, repeated) and the phone number.
pub async fn notifications_preferences(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    Submitted { user, form }: Submitted,
) -> Response {
    let mut preferences = BTreeMap::new();
    for event in EventType::ALL {
        let key = format!("pref.{}", event.as_str());
        let chosen: Vec<String> = form
            .all(&key)
            .into_iter()
            .filter(|c| Channel::parse(c).is_some())
            .collect();
        preferences.insert(event.as_str().to_string(), chosen);
    }
    let phone = form.get("phone_number").map(str::trim).unwrap_or("");
    let body = json!({
        "preferences": preferences,
        "phone_number": if phone.is_empty() { Value::Null } else { json!(phone) },
    });
    let answer = web
        .api
        .call(
            Call::new(Method::PUT, "/api/v2/notifications/preferences")
                .as_user(&user)
                .json(&body),
        )
        .await;
    if answer.status.is_success() {
        return Redirect::to("/notifications?saved=1").into_response();
    }
    let message = answer
        .field_errors()
        .into_iter()
        .map(|(f, m)| format!("{f} {m}"))
        .next()
        .unwrap_or_else(|| answer.message());
    super::error_page(&state, &web, &user, answer.status, &message).await
}

/// Filters the patients list does not offer in its URL: they name patients (and URLs
/// end up in logs and histories).
const IDENTIFYING_FILTERS: [&str; 3] = ["unhcr_numbers", "patient_ids", "updated_since"];

pub async fn patients(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    user: WebUser,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !user.has(Permission::PatientsRead) {
        return super::permission_refused(
            &state,
            &web,
            &user,
            Permission::PatientsRead,
            "/patients",
        )
        .await;
    }
    let chosen: BTreeMap<String, String> = crate::domain::filters::FILTER_NAMES
        .iter()
        .filter(|f| !IDENTIFYING_FILTERS.contains(f))
        .filter_map(|f| {
            query
                .get(&format!("filters.{f}"))
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(|v| (f.to_string(), v.to_string()))
        })
        .collect();
    let ctx = page_context(&state, &user, "patients").await;
    let filters = match crate::domain::filters::PatientFilters::from_query(&chosen) {
        Ok(f) => f,
        Err(errors) => {
            let errors: BTreeMap<String, String> = errors
                .into_iter()
                .map(|e| (format!("filters.{}", e.field), e.message))
                .collect();
            return web.templates.render_with(
                StatusCode::UNPROCESSABLE_ENTITY,
                "patients.html",
                with(
                    ctx,
                    json!({"patients": [], "values": chosen_values(&chosen), "errors": errors}),
                ),
            );
        }
    };
    let page = Page {
        after: cursor(&query),
        limit: PAGE_ROWS,
    };
    let list = match state
        .store
        .list_patients(user.caller.org(), &filters, &page)
        .await
    {
        Ok(l) => l,
        Err(e) => return store_error(e),
    };
    let next = (list.len() as i64 == PAGE_ROWS)
        .then(|| list.last().map(|p| p.id))
        .flatten();
    // The next page's link keeps the filters (none of them names a patient).
    let next_query = next.map(|id| {
        let mut q: Vec<String> = chosen
            .iter()
            .map(|(k, v)| format!("filters.{k}={}", super::url_encode(v)))
            .collect();
        q.push(format!("cursor={id}"));
        q.join("&")
    });
    let rows: Vec<Value> = list
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "unhcr_number": p.fields.unhcr_number,
                "name": format!("{} {}", p.fields.given_name, p.fields.family_name),
                "gender": p.fields.gender,
                "date_of_birth": p.fields.date_of_birth.map(|d| d.to_string()),
                "current_camp": p.fields.current_camp,
                "camp_section": p.fields.camp_section,
                "verification_status": p.fields.verification_status,
            })
        })
        .collect();
    web.templates.render(
        "patients.html",
        with(
            ctx,
            json!({
                "patients": rows,
                "values": chosen_values(&chosen),
                "next_query": next_query,
                "filtered": !chosen.is_empty(),
                "errors": {},
            }),
        ),
    )
}

/// The list's filters as the form's values (`filters.NAME`).
fn chosen_values(chosen: &BTreeMap<String, String>) -> Value {
    Value::Object(
        chosen
            .iter()
            .map(|(k, v)| (format!("filters.{k}"), json!(v)))
            .collect(),
    )
}

pub async fn audit(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    user: WebUser,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !user.has(Permission::AuditRead) {
        return super::permission_refused(&state, &web, &user, Permission::AuditRead, "/audit")
            .await;
    }
    let org = user.caller.org();
    let page = Page {
        after: cursor(&query),
        limit: PAGE_ROWS,
    };
    let entries = match state.store.list_audit(org, &page).await {
        Ok(e) => e,
        Err(e) => return store_error(e),
    };
    let emails = user_emails(&state, org).await;
    let next = (entries.len() as i64 == PAGE_ROWS)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    let rows: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "at": view::time(&e.occurred_at, user.tz),
                "who": e.user_id.map(|u| emails.get(&u).cloned().unwrap_or_else(|| u.to_string())),
                "action": e.action,
                "resource_type": e.resource_type,
                // The end of an id is enough to tell entries apart on screen.
                "resource_id": e.resource_id.as_deref().map(|id| {
                    let tail: String = id.chars().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
                    if tail.len() < id.len() { format!("…{tail}") } else { tail }
                }),
                "operation_id": e.operation_id,
                "outcome": e.outcome,
                "client_addr": e.client_addr,
            })
        })
        .collect();
    let keys = crate::audit::AuditKeys::from_keyring(&state.engine.keyring);
    let verified = crate::audit::verify(state.store.as_ref(), org, &keys, None)
        .await
        .map(|r| r.broken.is_none())
        .ok();
    let ctx = page_context(&state, &user, "audit").await;
    web.templates.render(
        "audit.html",
        with(
            ctx,
            json!({"entries": rows, "next_cursor": next, "intact": verified}),
        ),
    )
}

/// The organization's users, read-only: there is no user-management API yet (users are
/// created with `haven admin create-user`).
pub async fn users(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    user: WebUser,
) -> Response {
    if !user.has(Permission::OrgAdmin) {
        return super::permission_refused(&state, &web, &user, Permission::OrgAdmin, "/users")
            .await;
    }
    let list = match state.store.list_users(user.caller.org()).await {
        Ok(l) => l,
        Err(e) => return store_error(e),
    };
    let rows: Vec<Value> = list
        .iter()
        .map(|u| {
            json!({
                "email": u.email,
                "role": view::role_label(u.role),
                "created_at": view::time(&u.created_at, user.tz),
                "you": u.id == user.caller.user.id,
            })
        })
        .collect();
    let ctx = page_context(&state, &user, "users").await;
    web.templates
        .render("users.html", with(ctx, json!({"users": rows})))
}

/// Recurring schedules (SPEC 5) of the organization: name, when (cron in its zone),
/// what, whether it runs, its next run. They are made and changed through
/// `/api/v2/bulk/schedules`; a form for them is not built yet.
pub async fn schedules(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    user: WebUser,
) -> Response {
    let page = crate::store::Page {
        after: None,
        limit: 200,
    };
    let rows: Vec<Value> = match state.store.list_schedules(user.caller.org(), &page).await {
        Ok(list) => list
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "cron": s.cron,
                    "timezone": s.timezone,
                    "type": s.operation_type.as_str(),
                    "enabled": s.enabled,
                    "missed": s.missed.as_str(),
                    "next_run_at": s.next_run_at.as_ref().map(crate::domain::rfc3339),
                })
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing schedules for the web UI failed");
            Vec::new()
        }
    };
    let ctx = page_context(&state, &user, "schedules").await;
    web.templates
        .render("schedules.html", with(ctx, json!({"schedules": rows})))
}
