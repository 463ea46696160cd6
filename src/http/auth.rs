//! `POST /api/v2/auth/login`, `POST /api/v2/auth/logout`, `GET /api/v2/auth/me`.

use axum::extract::{ConnectInfo, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Duration;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;

use super::error::{AppError, AppResult};
use super::extract::{AuthUser, JsonBody};
use super::AppState;
use crate::audit::Actor;
use crate::auth;
use crate::domain::{now, rfc3339};
use crate::store::{TokenRecord, User};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v2/auth/login", post(login))
        .route("/api/v2/auth/logout", post(logout))
        .route("/api/v2/auth/me", get(me))
}

#[derive(Deserialize)]
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

async fn login(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    JsonBody(body): JsonBody<LoginIn>,
) -> AppResult<Json<Value>> {
    let store = &state.store;
    let at = now();
    let window_start = at - Duration::seconds(auth::THROTTLE_WINDOW_SECS);
    let account_key = auth::account_throttle_key(&body.email);
    let address_key = auth::address_throttle_key(&addr.ip().to_string());

    for (key, limit) in [
        (&account_key, auth::MAX_FAILURES_PER_ACCOUNT),
        (&address_key, auth::MAX_FAILURES_PER_ADDRESS),
    ] {
        let (failures, oldest) = store.login_failures_since(key, window_start).await?;
        if failures >= limit {
            let free_at = oldest.unwrap_or(at) + Duration::seconds(auth::THROTTLE_WINDOW_SECS);
            let retry_after_secs = (free_at - at).num_seconds().max(1) as u64;
            return Err(AppError::TooManyRequests {
                message: "too many failed logins: wait before trying again".into(),
                retry_after_secs,
            });
        }
    }

    let email = body.email.trim().to_lowercase();
    let account = store.find_user_by_email(&email).await?;
    let stored_hash = account
        .as_ref()
        .map(|a| a.password_hash.clone())
        .unwrap_or_else(|| auth::dummy_hash().to_string());
    let password = body.password;
    let valid = tokio::task::spawn_blocking(move || auth::verify_password(&password, &stored_hash))
        .await
        .map_err(|e| AppError::Internal(e.into()))?;

    let account = match account {
        Some(account) if valid => account,
        unknown_or_wrong => {
            store
                .record_login_failure(&[account_key, address_key], at)
                .await?;
            // Failures for unknown emails belong to no organization, so no audit chain
            // holds them; they are still counted for throttling.
            if let Some(user) = unknown_or_wrong.map(|a| a.user) {
                let actor = Actor {
                    organization_id: user.organization_id,
                    user_id: Some(user.id),
                    client_addr: Some(addr),
                };
                let entry = actor.entry(
                    "auth.login",
                    "user",
                    Some(user.id.to_string()),
                    "failure",
                    json!({"reason": "wrong password"}),
                );
                store.append_audit(entry).await?;
            }
            return Err(AppError::BadCredentials);
        }
    };

    store.clear_login_failures(&account_key).await?;
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
    let actor = Actor {
        organization_id: user.organization_id,
        user_id: Some(user.id),
        client_addr: Some(addr),
    };
    store
        .append_audit(actor.entry(
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
