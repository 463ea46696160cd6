//! Protections applied to every response: headers that keep browsers and proxies from
//! storing or reinterpreting answers, and the audit of requests for ids that belong to
//! another organization (answered 404 like unknown ids, SPEC 2, but recorded).

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;
use uuid::Uuid;

use super::extract::AuthUser;
use super::AppState;

/// `X-Content-Type-Options: nosniff` on every answer, and `Cache-Control: no-store` on
/// every API answer that does not set its own: they carry patient data and tokens,
/// which no browser or proxy cache may keep.
pub async fn headers(request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if api && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// After a 404 for a path naming an id, checks whether the id belongs to another
/// organization than the caller's; if so, the caller's organization's audit chain gets
/// an `access.cross_organization` entry. The answer stays the same 404.
pub async fn audit_cross_organization(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let ids: Vec<Uuid> = request
        .uri()
        .path()
        .split('/')
        .filter_map(|segment| Uuid::parse_str(segment).ok())
        .collect();
    if ids.is_empty() {
        return next.run(request).await;
    }
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    // Who asked is looked up only for a 404, from a copy of the request's head.
    let mut head = Request::new(());
    *head.headers_mut() = request.headers().clone();
    *head.extensions_mut() = request.extensions().clone();
    let response = next.run(request).await;
    if response.status() != StatusCode::NOT_FOUND {
        return response;
    }
    let (mut parts, ()) = head.into_parts();
    let caller = <AuthUser as axum::extract::FromRequestParts<AppState>>::from_request_parts(
        &mut parts, &state,
    )
    .await;
    if let Ok(caller) = caller {
        for id in ids {
            if let Err(e) = audit_if_foreign(&state, &caller, id, &method, &path).await {
                tracing::error!(
                    error = format!("{e:#}"),
                    "auditing a cross-organization request failed"
                );
            }
        }
    }
    response
}

async fn audit_if_foreign(
    state: &AppState,
    caller: &AuthUser,
    id: Uuid,
    method: &str,
    path: &str,
) -> anyhow::Result<()> {
    let Some((kind, owner)) = state.store.owner_of(id).await? else {
        return Ok(());
    };
    if owner == caller.org() {
        return Ok(());
    }
    let entry = caller.actor().entry(
        "access.cross_organization",
        kind,
        Some(id.to_string()),
        "not_found",
        json!({"method": method, "path": path}),
    );
    state.store.append_audit(entry).await?;
    Ok(())
}
