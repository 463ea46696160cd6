//! Notifications over HTTP (SPEC 6): the WebSocket of live events, in-app
//! notifications, preferences, and the organization's delivery log.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{AppError, AppResult};
use super::extract::{perm, AuthUser, JsonBody, PathId, Require};
use super::{page_from_query, AppState};
use crate::domain::now;
use crate::notify::{Channel, Event, EventType};

/// How often a WebSocket client is pinged.
const PING_EVERY: Duration = Duration::from_secs(30);
/// The name of the web UI's session cookie.
pub const SESSION_COOKIE: &str = "haven_session";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(read_all))
        .routes(routes!(read))
        .routes(routes!(preferences, set_preferences))
        .routes(routes!(deliveries))
}

/// `GET /api/v2/ws`, outside the OpenAPI document (a WebSocket upgrade, which OpenAPI
/// cannot describe); it answers 401 without a valid token like the others.
pub fn websocket_route() -> Router<AppState> {
    Router::new().route("/api/v2/ws", get(websocket))
}

/// The caller's in-app notifications, newest first, with the unread count.
#[utoipa::path(get, path = "/api/v2/notifications", tag = "notifications", params(("limit" = Option<i64>, Query, description = "Page size, 1 to 200"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 401, description = "No valid token")))]
async fn list(
    State(state): State<AppState>,
    caller: AuthUser,
    Query(query): Query<BTreeMap<String, String>>,
) -> AppResult<Json<Value>> {
    let page = page_from_query(&query)?;
    let items = state
        .store
        .list_notifications(caller.org(), caller.user.id, &page)
        .await?;
    let unread = state
        .store
        .unread_count(caller.org(), caller.user.id)
        .await?;
    let next_cursor = super::next_cursor(&items, page.limit, |n| n.id);
    Ok(Json(json!({
        "notifications": items.iter().map(|n| n.to_json()).collect::<Vec<_>>(),
        "unread_count": unread,
        "next_cursor": next_cursor,
    })))
}

/// Marks one of the caller's notifications read.
#[utoipa::path(post, path = "/api/v2/notifications/{id}/read", tag = "notifications", params(("id" = Uuid, Path, description = "The id")), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 404, description = "No such notification of yours"), (status = 401, description = "No valid token")))]
async fn read(
    State(state): State<AppState>,
    caller: AuthUser,
    PathId(id): PathId,
) -> AppResult<Json<Value>> {
    if !state
        .store
        .mark_read(caller.org(), caller.user.id, id, now())
        .await?
    {
        return Err(AppError::NotFound("notification"));
    }
    let unread = state
        .store
        .unread_count(caller.org(), caller.user.id)
        .await?;
    Ok(Json(
        json!({"id": id, "read": true, "unread_count": unread}),
    ))
}

/// Marks all of the caller's notifications read.
#[utoipa::path(post, path = "/api/v2/notifications/read-all", tag = "notifications", security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 401, description = "No valid token")))]
async fn read_all(State(state): State<AppState>, caller: AuthUser) -> AppResult<Json<Value>> {
    let marked = state
        .store
        .mark_all_read(caller.org(), caller.user.id, now())
        .await?;
    Ok(Json(json!({"marked_read": marked, "unread_count": 0})))
}

fn preferences_json(prefs: &crate::store::notify::Preferences) -> Value {
    let map: serde_json::Map<String, Value> = prefs
        .channels
        .iter()
        .map(|(event, channels)| {
            (
                event.as_str().to_string(),
                json!(channels.iter().map(|c| c.as_str()).collect::<Vec<_>>()),
            )
        })
        .collect();
    json!({"preferences": map, "phone_number": prefs.phone_number})
}

/// The caller's channels per event type (defaults where unset) and phone number.
#[utoipa::path(get, path = "/api/v2/notifications/preferences", tag = "notifications", security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 401, description = "No valid token")))]
async fn preferences(State(state): State<AppState>, caller: AuthUser) -> AppResult<Json<Value>> {
    let prefs = state
        .store
        .preferences(caller.org(), caller.user.id)
        .await?;
    Ok(Json(preferences_json(&prefs)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PreferencesBody {
    #[serde(default)]
    preferences: BTreeMap<String, Vec<String>>,
    /// Absent: unchanged; `null`: removed.
    #[serde(default, deserialize_with = "present")]
    phone_number: Option<Option<String>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    use serde::Deserialize;
    Ok(Some(Option::<String>::deserialize(d)?))
}

/// Sets channels for the event types given, and the phone number when given.
#[utoipa::path(put, path = "/api/v2/notifications/preferences", tag = "notifications", request_body(content = crate::http::openapi::bodies::PreferencesIn, content_type = "application/json"), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 422, description = "Invalid input"), (status = 401, description = "No valid token")))]
async fn set_preferences(
    State(state): State<AppState>,
    caller: AuthUser,
    JsonBody(body): JsonBody<PreferencesBody>,
) -> AppResult<Json<Value>> {
    let mut channels = Vec::new();
    for (name, list) in &body.preferences {
        let field = format!("preferences.{name}");
        let Some(event) = EventType::parse(name) else {
            return Err(AppError::invalid_field(
                &field,
                "unknown_event",
                "is not an event type (operation.scheduled, operation.started, operation.progress, \
                 operation.completed, operation.failed, operation.cancelled, operation.rolled_back)",
            ));
        };
        let mut set = Vec::new();
        for channel in list {
            match Channel::parse(channel) {
                Some(c) if !set.contains(&c) => set.push(c),
                Some(_) => {}
                None => {
                    return Err(AppError::invalid_field(
                        &field,
                        "unknown_channel",
                        "channels are in_app, email, sms and websocket",
                    ))
                }
            }
        }
        set.sort();
        channels.push((event, set));
    }
    if let Some(Some(phone)) = &body.phone_number {
        if !crate::notify::sms::is_e164(phone) {
            return Err(AppError::invalid_field(
                "phone_number",
                "invalid_phone",
                "must be an E.164 number such as +254700000001",
            ));
        }
    }
    // The audit names what changed, not the phone number itself.
    let audit = caller.actor().entry(
        "notifications.preferences",
        "user",
        Some(caller.user.id.to_string()),
        "success",
        json!({
            "events": channels.iter().map(|(e, c)| json!({"event": e.as_str(), "channels": c.iter().map(|c| c.as_str()).collect::<Vec<_>>()})).collect::<Vec<_>>(),
            "phone_number_changed": body.phone_number.is_some(),
        }),
    );
    state
        .store
        .set_preferences(
            caller.org(),
            caller.user.id,
            &channels,
            body.phone_number,
            audit,
        )
        .await?;
    let prefs = state
        .store
        .preferences(caller.org(), caller.user.id)
        .await?;
    Ok(Json(preferences_json(&prefs)))
}

/// The organization's deliveries (email, SMS, webhooks), newest first, for admins:
/// `?status=failed` shows what did not arrive.
#[utoipa::path(get, path = "/api/v2/notifications/deliveries", tag = "notifications", params(("status" = Option<String>, Query, description = "pending, delivered or failed"), ("limit" = Option<i64>, Query, description = "Page size, 1 to 200"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")), security(("bearer" = ["org.admin"])), responses((status = 200, description = "OK"), (status = 422, description = "Invalid input"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn deliveries(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::OrgAdmin>,
    Query(query): Query<BTreeMap<String, String>>,
) -> AppResult<Json<Value>> {
    let page = page_from_query(&query)?;
    let status = query.get("status").map(String::as_str);
    if let Some(s) = status {
        if !["pending", "delivered", "failed"].contains(&s) {
            return Err(AppError::invalid_field(
                "status",
                "invalid_status",
                "must be pending, delivered or failed",
            ));
        }
    }
    let list = state
        .store
        .list_deliveries(caller.org(), None, status, &page)
        .await?;
    let next_cursor = super::next_cursor(&list, page.limit, |d| d.id);
    Ok(Json(json!({
        "deliveries": list.iter().map(|d| d.to_json()).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}

/// The token of a WebSocket request: the `Authorization` header, the session cookie
/// (only from a page of this server: the `Origin` must match the `Host`, so another
/// site cannot open a socket in a logged-in user's name), or `?token=`.
fn websocket_token(headers: &HeaderMap, query: &BTreeMap<String, String>) -> Option<String> {
    if let Some(text) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(token) = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
        {
            return Some(token.trim().to_string());
        }
    }
    let same_origin = match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host),
        _ => false,
    };
    if same_origin {
        let cookie = crate::web::session::cookie(headers, SESSION_COOKIE);
        if cookie.is_some() {
            return cookie;
        }
    }
    query.get("token").cloned()
}

async fn websocket(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> AppResult<Response> {
    let token = websocket_token(&headers, &query).ok_or(AppError::Unauthorized)?;
    let user = state
        .store
        .find_active_token(&crate::auth::token_hash(&token), now())
        .await?
        .ok_or(AppError::Unauthorized)?;
    let org = user.organization_id;
    let after = match query.get("after").filter(|a| !a.is_empty()) {
        None => None,
        Some(text) => {
            let id = Uuid::parse_str(text).map_err(|_| {
                AppError::invalid_field("after", "invalid_event_id", "is not an event_id")
            })?;
            Some(state.store.event_seq(org, id).await?.ok_or_else(|| {
                AppError::invalid_field(
                    "after",
                    "unknown_event_id",
                    "is not an event of your organization (it may have been purged)",
                )
            })?)
        }
    };
    let prefs = state.store.preferences(org, user.id).await?;
    let wanted: Vec<EventType> = prefs
        .channels
        .iter()
        .filter(|(_, c)| c.contains(&Channel::Websocket))
        .map(|(e, _)| *e)
        .collect();
    let feed = Feed {
        receiver: state.hub.subscribe(),
        org,
        wanted,
        replay: match after {
            Some(seq) => state.store.org_events_after(org, seq, 1000).await?,
            None => Vec::new(),
        },
    };
    Ok(upgrade.on_upgrade(move |socket| feed.serve(socket)))
}

/// What one WebSocket client gets.
struct Feed {
    receiver: tokio::sync::broadcast::Receiver<std::sync::Arc<Event>>,
    org: Uuid,
    wanted: Vec<EventType>,
    /// Events after the `event_id` a reconnecting client saw, sent first.
    replay: Vec<Event>,
}

impl Feed {
    async fn serve(mut self, mut socket: WebSocket) {
        let mut last_progress: HashMap<Uuid, Instant> = HashMap::new();
        let mut sent_up_to = 0i64;
        for event in std::mem::take(&mut self.replay) {
            sent_up_to = sent_up_to.max(event.seq);
            if self.wanted.contains(&event.event_type) && !self.send(&mut socket, &event).await {
                return;
            }
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                received = self.receiver.recv() => match received {
                    Ok(event) => {
                        if event.organization_id != self.org
                            || event.seq <= sent_up_to
                            || !self.wanted.contains(&event.event_type)
                        {
                            continue;
                        }
                        if event.event_type == EventType::Progress {
                            // At most one progress frame a second per operation.
                            let at = Instant::now();
                            match last_progress.get(&event.operation_id) {
                                Some(t) if at.duration_since(*t) < Duration::from_secs(1) => continue,
                                _ => {
                                    last_progress.insert(event.operation_id, at);
                                }
                            }
                        }
                        if !self.send(&mut socket, &event).await {
                            return;
                        }
                    }
                    // A slow client missed some events; it can reconnect with `after`.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = ping.tick() => {
                    if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                        return;
                    }
                }
                incoming = socket.recv() => match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    async fn send(&self, socket: &mut WebSocket, event: &Event) -> bool {
        socket
            .send(Message::Text(event.to_json().to_string().into()))
            .await
            .is_ok()
    }
}
