//! Webhooks (SPEC 6 and 10), for organization admins: create (the secret is shown
//! once), list, get, update, delete, and each webhook's delivery log.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{AppError, AppResult};
use super::extract::{perm, JsonBody, PathId, Require};
use super::{page_from_query, AppState};
use crate::domain::{new_id, now};
use crate::notify::webhook::{self, TargetError};
use crate::notify::EventType;
use crate::store::notify::Webhook;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(deliveries))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    url: String,
    events: Vec<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    enabled: Option<bool>,
}

/// Checks a webhook's fields; the URL is resolved, and private targets are refused
/// unless `--allow-private-webhooks`.
async fn validated(state: &AppState, body: &WebhookBody) -> AppResult<Vec<EventType>> {
    if body.url.len() > 2048 {
        return Err(AppError::invalid_field(
            "url",
            "too_long",
            "must be at most 2048 characters",
        ));
    }
    if body.description.len() > 500 {
        return Err(AppError::invalid_field(
            "description",
            "too_long",
            "must be at most 500 characters",
        ));
    }
    if let Err(e) = webhook::resolve_target(&body.url, state.config.allow_private_webhooks).await {
        let code = match e {
            TargetError::Private => "private_address",
            TargetError::Unresolvable => "unresolvable",
            TargetError::Scheme | TargetError::Invalid => "invalid_url",
        };
        return Err(AppError::invalid_field("url", code, &e.to_string()));
    }
    if body.events.is_empty() {
        return Err(AppError::invalid_field(
            "events",
            "required",
            "name at least one event type",
        ));
    }
    let mut events = Vec::new();
    for name in &body.events {
        let event = EventType::parse(name).ok_or_else(|| {
            AppError::invalid_field("events", "unknown_event", "contains an unknown event type")
        })?;
        if !events.contains(&event) {
            events.push(event);
        }
    }
    events.sort();
    Ok(events)
}

/// Creates a webhook; the answer holds its signing secret, shown this once.
#[utoipa::path(post, path = "/api/v2/webhooks", tag = "webhooks", request_body(content = crate::http::openapi::bodies::WebhookIn, content_type = "application/json"), security(("bearer" = ["org.admin"])), responses((status = 201, description = "Created"), (status = 422, description = "Invalid input"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn create(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::OrgAdmin>,
    JsonBody(body): JsonBody<WebhookBody>,
) -> AppResult<impl IntoResponse> {
    let events = validated(&state, &body).await?;
    let id = new_id();
    let secret = webhook::new_secret();
    let hook = Webhook {
        id,
        organization_id: caller.org(),
        url: body.url.clone(),
        events,
        description: body.description.clone(),
        enabled: body.enabled.unwrap_or(true),
        failing_since: None,
        disabled_reason: None,
        created_at: now(),
        sealed_secret: state
            .engine
            .keyring
            .seal(secret.as_bytes(), &webhook::secret_aad(id)),
    };
    let audit = caller.actor().entry(
        "webhook.create",
        "webhook",
        Some(id.to_string()),
        "success",
        json!({"events": hook.events.iter().map(|e| e.as_str()).collect::<Vec<_>>()}),
    );
    state.store.create_webhook(&hook, audit).await?;
    let mut shown = hook.to_json();
    shown["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(shown)))
}

/// The organization's webhooks.
#[utoipa::path(get, path = "/api/v2/webhooks", tag = "webhooks", security(("bearer" = ["org.admin"])), responses((status = 200, description = "OK"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn list(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::OrgAdmin>,
) -> AppResult<Json<Value>> {
    let hooks = state.store.list_webhooks(caller.org()).await?;
    Ok(Json(json!({
        "webhooks": hooks.iter().map(Webhook::to_json).collect::<Vec<_>>(),
        "next_cursor": null,
    })))
}

async fn find(state: &AppState, org: uuid::Uuid, id: uuid::Uuid) -> AppResult<Webhook> {
    state
        .store
        .get_webhook(org, id)
        .await?
        .ok_or(AppError::NotFound("webhook"))
}

/// One webhook (without its secret).
#[utoipa::path(get, path = "/api/v2/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path, description = "The id")), security(("bearer" = ["org.admin"])), responses((status = 200, description = "OK"), (status = 404, description = "No such id in your organization"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn show(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::OrgAdmin>,
    PathId(id): PathId,
) -> AppResult<Json<Value>> {
    Ok(Json(find(&state, caller.org(), id).await?.to_json()))
}

/// Replaces a webhook's URL, events, description and `enabled`.
#[utoipa::path(put, path = "/api/v2/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path, description = "The id")), request_body(content = crate::http::openapi::bodies::WebhookIn, content_type = "application/json"), security(("bearer" = ["org.admin"])), responses((status = 200, description = "OK"), (status = 404, description = "No such id in your organization"), (status = 422, description = "Invalid input"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn update(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::OrgAdmin>,
    PathId(id): PathId,
    JsonBody(raw): JsonBody<serde_json::Map<String, Value>>,
) -> AppResult<Json<Value>> {
    // Another organization's id is a 404 whatever the body says.
    let current = find(&state, caller.org(), id).await?;
    let body: WebhookBody = serde_json::from_value(Value::Object(raw)).map_err(|_| {
        AppError::invalid_field(
            "body",
            "invalid_type",
            "must be {\"url\": string, \"events\": [string], \"description\": string, \"enabled\": bool}",
        )
    })?;
    let events = validated(&state, &body).await?;
    let hook = Webhook {
        url: body.url.clone(),
        events,
        description: body.description.clone(),
        enabled: body.enabled.unwrap_or(current.enabled),
        ..current
    };
    let audit = caller.actor().entry(
        "webhook.update",
        "webhook",
        Some(id.to_string()),
        "success",
        json!({"enabled": hook.enabled, "events": hook.events.iter().map(|e| e.as_str()).collect::<Vec<_>>()}),
    );
    if !state.store.update_webhook(&hook, audit).await? {
        return Err(AppError::NotFound("webhook"));
    }
    Ok(Json(find(&state, caller.org(), id).await?.to_json()))
}

/// Deletes a webhook (its delivery log stays).
#[utoipa::path(delete, path = "/api/v2/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path, description = "The id")), security(("bearer" = ["org.admin"])), responses((status = 204, description = "Deleted"), (status = 404, description = "No such id in your organization"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn remove(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::OrgAdmin>,
    PathId(id): PathId,
) -> AppResult<StatusCode> {
    let audit = caller.actor().entry(
        "webhook.delete",
        "webhook",
        Some(id.to_string()),
        "success",
        json!({}),
    );
    if !state.store.delete_webhook(caller.org(), id, audit).await? {
        return Err(AppError::NotFound("webhook"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A webhook's deliveries with every attempt, newest first.
#[utoipa::path(get, path = "/api/v2/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = Uuid, Path, description = "The id"), ("limit" = Option<i64>, Query, description = "Page size, 1 to 200"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")), security(("bearer" = ["org.admin"])), responses((status = 200, description = "OK"), (status = 404, description = "No such id in your organization"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn deliveries(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::OrgAdmin>,
    PathId(id): PathId,
    Query(query): Query<BTreeMap<String, String>>,
) -> AppResult<Json<Value>> {
    find(&state, caller.org(), id).await?;
    let page = page_from_query(&query)?;
    let list = state
        .store
        .list_deliveries(caller.org(), Some(id), None, &page)
        .await?;
    let next_cursor = super::next_cursor(&list, page.limit, |d| d.id);
    Ok(Json(json!({
        "deliveries": list.iter().map(|d| d.to_json()).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}
