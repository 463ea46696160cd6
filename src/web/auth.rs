//! Log in and log out. The log-in form is sent to `POST /api/v2/auth/login` in-process,
//! so it is throttled and audited exactly like the API's; the token it answers becomes
//! the session cookie.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde_json::json;

use super::forms::Submitted;
use super::forward::Call;
use super::session;
use super::Web;
use crate::http::AppState;

/// Where to go after logging in: a path of this site only (browsers drop tabs and
/// newlines from URLs, so `/\t/example.org` would become `//example.org`: any
/// whitespace, control character or backslash is refused).
fn safe_next(next: Option<&String>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.chars().all(|c| c.is_ascii_graphic() && c != '\\') =>
        {
            n.clone()
        }
        _ => "/".to_string(),
    }
}

fn login_form(
    state: &AppState,
    web: &Web,
    status: StatusCode,
    next: &str,
    email: &str,
    error: Option<String>,
) -> Response {
    let token = crate::auth::new_token();
    let mut response = web.templates.render_with(
        status,
        "login.html",
        json!({"login_csrf": token, "next": next, "email": email, "error": error}),
    );
    if let Ok(value) = session::login_csrf_cookie(state, &token).parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

pub async fn login_page(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let next = safe_next(query.get("next"));
    login_form(&state, &web, StatusCode::OK, &next, "", None)
}

pub async fn login(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let next = safe_next(form.get("next"));
    let email = form
        .get("email")
        .map(|e| e.trim())
        .unwrap_or("")
        .to_string();
    let expected = session::cookie(&headers, session::LOGIN_CSRF_COOKIE);
    let presented = form.get(session::CSRF_FIELD);
    if !session::same_origin(&headers) || expected.is_none() || expected.as_ref() != presented {
        return login_form(
            &state,
            &web,
            StatusCode::FORBIDDEN,
            &next,
            &email,
            Some("The form had expired. Please log in again.".into()),
        );
    }
    let password = form.get("password").cloned().unwrap_or_default();
    let mut call = Call::new(Method::POST, "/api/v2/auth/login")
        .json(&json!({"email": email, "password": password}));
    call.client = Some(addr);
    let answer = web.api.call(call).await;
    let Some(token) = answer.body["token"]
        .as_str()
        .filter(|_| answer.status == StatusCode::OK)
    else {
        let message = match answer.status {
            StatusCode::UNAUTHORIZED => "The email or the password is not right.".to_string(),
            StatusCode::TOO_MANY_REQUESTS => {
                "Too many failed attempts. Wait a few minutes, then try again.".to_string()
            }
            _ => answer.message(),
        };
        return login_form(&state, &web, answer.status, &next, &email, Some(message));
    };
    let mut response = Redirect::to(&next).into_response();
    let cookies = [
        session::session_cookie(&state, token),
        session::expired_cookie(&state, session::LOGIN_CSRF_COOKIE),
    ];
    for cookie in cookies {
        if let Ok(value) = cookie.parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Revokes the token through the API (audited there) and clears the cookie.
pub async fn logout(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    Submitted { user, .. }: Submitted,
) -> Response {
    let answer = web
        .api
        .call(Call::new(Method::POST, "/api/v2/auth/logout").as_user(&user))
        .await;
    if !answer.status.is_success() {
        tracing::warn!(status = %answer.status, "logout through the API failed");
    }
    let mut response = Redirect::to("/login").into_response();
    if let Ok(value) = session::expired_cookie(&state, session::SESSION_COOKIE).parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn only_paths_of_this_site_are_followed_after_logging_in() {
        let next = |s: &str| safe_next(Some(&s.to_string()));
        assert_eq!(next("/operations/1"), "/operations/1");
        for bad in [
            "//evil.example",
            "/\t/evil.example",
            "/\\evil",
            "https://evil.example",
            "/\n/x",
            "",
        ] {
            assert_eq!(next(bad), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
