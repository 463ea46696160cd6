//! `POST /api/v2/auth/login`, `POST /api/v2/auth/logout`, `GET /api/v2/auth/me`.

use axum::extract::{ConnectInfo, State};
use axum::Json;
use chrono::Duration;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{AppError, AppResult};
use super::extract::{AuthUser, JsonBody};
use super::AppState;
use crate::audit::Actor;
use crate::auth;
use crate::domain::{new_id, now, rfc3339};
use crate::store::security::{LoginGate, ThrottleKey};
use crate::store::{TokenRecord, User};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
}

/// The body of a login.
#[derive(Deserialize, utoipa::ToSchema)]
struct LoginIn {
    email: String,
    password: String,
}

/// The user object of the login answer and of `/me`.
pub fn user_json(user: &User) -> Value {
    json!({
        "id": user.id,
        "email": user.email,
        "role": user.role.as_str(),
        "organization_id": user.organization_id,
    })
}

/// The longest email and password a login accepts (a longer one cannot be an account's:
/// emails are at most 254 characters, and hashing a huge password wastes a hashing slot).
const MAX_LOGIN_FIELD_CHARS: usize = 1024;

/// Logs in: a bearer token for the user.
#[utoipa::path(post, path = "/api/v2/auth/login", tag = "auth", request_body(content = LoginIn, content_type = "application/json"), responses((status = 200, description = "OK"), (status = 401, description = "Wrong email or password"), (status = 422, description = "Invalid input"), (status = 429, description = "Too many failed logins"), (status = 503, description = "Too many logins at once")))]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    JsonBody(body): JsonBody<LoginIn>,
) -> AppResult<Json<Value>> {
    let store = &state.store;
    for (field, value) in [("email", &body.email), ("password", &body.password)] {
        if value.contains('\0') || value.chars().count() > MAX_LOGIN_FIELD_CHARS {
            return Err(AppError::invalid_field(
                field,
                "invalid_value",
                "is too long or holds a NUL character",
            ));
        }
    }
    // A place in the hashing queue first: when it is full the request costs nothing more.
    let queued = state.login_hashing.enter()?;
    let at = now();
    let window_start = at - Duration::seconds(auth::THROTTLE_WINDOW_SECS);
    let email = body.email.trim().to_lowercase();
    let keys = [
        ThrottleKey {
            key: auth::account_throttle_key(&email),
            limit: auth::MAX_FAILURES_PER_ACCOUNT,
        },
        ThrottleKey {
            key: auth::address_throttle_key(&addr.ip().to_string()),
            limit: auth::MAX_FAILURES_PER_ADDRESS,
        },
    ];
    // The attempt is counted as a failure before the password is checked, atomically
    // with the check of the limits, so parallel guesses cannot all get through.
    let attempt = new_id();
    let account = store.find_user_by_email(&email).await?;
    if let LoginGate::Throttled { oldest } = store
        .begin_login_attempt(&keys, attempt, at, window_start)
        .await?
    {
        if let Some(user) = account.as_ref().map(|a| &a.user) {
            audit_login(&state, user, addr, "throttled", "too many failed logins").await?;
        }
        let free_at = oldest.unwrap_or(at) + Duration::seconds(auth::THROTTLE_WINDOW_SECS);
        let retry_after_secs = (free_at - at).num_seconds().max(1) as u64;
        return Err(AppError::TooManyRequests {
            message: "too many failed logins: wait before trying again".into(),
            retry_after_secs,
        });
    }

    let stored_hash = account
        .as_ref()
        .map(|a| a.password_hash.clone())
        .unwrap_or_else(|| auth::dummy_hash().to_string());
    let password = body.password;
    let valid = queued
        .hash(move || auth::verify_password(&password, &stored_hash))
        .await?;

    let account = match account {
        Some(account) if valid => account,
        unknown_or_wrong => {
            // The failure was recorded before hashing. Failures for unknown emails
            // belong to no organization, so no audit chain holds them.
            if let Some(user) = unknown_or_wrong.map(|a| a.user) {
                audit_login(&state, &user, addr, "failure", "wrong password").await?;
            }
            return Err(AppError::BadCredentials);
        }
    };

    store.forget_login_attempt(attempt).await?;
    store.clear_login_failures(&keys[0].key).await?;
    let user = account.user;
    let token = auth::new_token();
    let ttl =
        Duration::from_std(state.config.token_ttl).map_err(|e| AppError::Internal(e.into()))?;
    let record = TokenRecord {
        token_hash: auth::token_hash(&token),
        user_id: user.id,
        organization_id: user.organization_id,
        created_at: at,
        expires_at: at + ttl,
    };
    store.insert_token(&record).await?;
    store
        .append_audit(login_actor(&user, addr).entry(
            "auth.login",
            "user",
            Some(user.id.to_string()),
            "success",
            json!({}),
        ))
        .await?;
    Ok(Json(json!({
        "token": token,
        "expires_at": rfc3339(&record.expires_at),
        "user": user_json(&user),
    })))
}

/// An `auth.login` entry in the account's organization that did not log in.
async fn audit_login(
    state: &AppState,
    user: &User,
    addr: SocketAddr,
    outcome: &str,
    reason: &str,
) -> AppResult<()> {
    let entry = login_actor(user, addr).entry(
        "auth.login",
        "user",
        Some(user.id.to_string()),
        outcome,
        json!({ "reason": reason }),
    );
    state.store.append_audit(entry).await?;
    Ok(())
}

fn login_actor(user: &User, addr: SocketAddr) -> Actor {
    Actor {
        organization_id: user.organization_id,
        user_id: Some(user.id),
        client_addr: Some(addr),
    }
}

/// Revokes the token of the request.
#[utoipa::path(post, path = "/api/v2/auth/logout", tag = "auth", security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn logout(State(state): State<AppState>, caller: AuthUser) -> AppResult<Json<Value>> {
    state.store.revoke_token(&caller.token_hash, now()).await?;
    let entry = caller.actor().entry(
        "auth.logout",
        "user",
        Some(caller.user.id.to_string()),
        "success",
        json!({}),
    );
    state.store.append_audit(entry).await?;
    Ok(Json(json!({"logged_out": true})))
}

/// The caller and their permissions.
#[utoipa::path(get, path = "/api/v2/auth/me", tag = "auth", security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn me(caller: AuthUser) -> Json<Value> {
    let mut body = user_json(&caller.user);
    body["permissions"] = json!(caller
        .user
        .role
        .permissions()
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>());
    Json(body)
}
