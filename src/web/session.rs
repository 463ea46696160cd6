//! The web UI's session: the login token of SPEC 2 kept in an HttpOnly cookie, and the
//! CSRF token derived from it.
//!
//! - The cookie `haven_session` holds the same opaque token as `POST /api/v2/auth/login`
//!   answers (so logout, expiry and revocation work the same); HttpOnly, `SameSite=Lax`,
//!   `Secure` when `--public-url` is https.
//! - The CSRF token is HMAC-SHA256 of a fixed label keyed with the session token: only a
//!   page of this server, which rendered it, knows it; it needs no storage and changes
//!   with every login. Forms carry it in the hidden field `csrf_token`, scripts in the
//!   header `X-CSRF-Token`. The API accepts the cookie only together with that header.
//! - The log-in form, before any session exists, uses a random double-submit token
//!   (cookie `haven_login_csrf` and the same value in the form).

use std::net::SocketAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::http::extract::{client_addr, AuthUser};
use crate::http::AppState;

/// The session cookie (the WebSocket endpoint reads it too).
pub const SESSION_COOKIE: &str = crate::http::notifications::SESSION_COOKIE;
/// The double-submit token of the log-in form.
pub const LOGIN_CSRF_COOKIE: &str = "haven_login_csrf";
/// The user's time zone as the browser detected it (or the user chose); not secret,
/// readable by the page's script, used to show times.
pub const TZ_COOKIE: &str = "haven_tz";
/// The hidden form field carrying the CSRF token.
pub const CSRF_FIELD: &str = "csrf_token";
/// The header carrying the CSRF token on script calls.
pub const CSRF_HEADER: &str = "x-csrf-token";

const CSRF_LABEL: &[u8] = b"haven web ui csrf v1";

fn csrf_mac(session_token: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(session_token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(CSRF_LABEL);
    mac
}

/// The CSRF token of a session.
pub fn csrf_token(session_token: &str) -> String {
    hex::encode(csrf_mac(session_token).finalize().into_bytes())
}

/// Whether `presented` is the CSRF token of this session (compared in constant time).
pub fn csrf_matches(session_token: &str, presented: &str) -> bool {
    match hex::decode(presented.trim()) {
        Ok(bytes) => csrf_mac(session_token).verify_slice(&bytes).is_ok(),
        Err(_) => false,
    }
}

/// A cookie's value from the request headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The session token of an API request that proves it comes from a page of this
/// server: the session cookie plus a matching `X-CSRF-Token` header. Used by the API's
/// extractor; without the header the cookie is ignored (a cross-site request cannot
/// read the page, so it cannot know the token).
pub fn api_session_token(headers: &HeaderMap) -> Option<String> {
    let token = cookie(headers, SESSION_COOKIE)?;
    let presented = headers.get(CSRF_HEADER)?.to_str().ok()?;
    csrf_matches(&token, presented).then_some(token)
}

/// `; Secure` when the public URL is https (the cookie then never travels in clear).
fn secure_attr(state: &AppState) -> &'static str {
    if state.config.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// The `Set-Cookie` value of a new session.
pub fn session_cookie(state: &AppState, token: &str) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        state.config.token_ttl.as_secs(),
        secure_attr(state)
    )
}

/// The `Set-Cookie` value that removes a cookie.
pub fn expired_cookie(state: &AppState, name: &str) -> String {
    format!(
        "{name}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{}",
        secure_attr(state)
    )
}

/// The `Set-Cookie` value of the log-in form's double-submit token (10 minutes).
pub fn login_csrf_cookie(state: &AppState, value: &str) -> String {
    format!(
        "{LOGIN_CSRF_COOKIE}={value}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=600{}",
        secure_attr(state)
    )
}

/// Whether a state-changing request comes from this server's own pages, by the
/// `Origin` header browsers send with every POST (absent: older clients and tests,
/// which the CSRF token still covers).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host)
}

/// A logged-in user of the web UI. Pages that need a login take this; without a valid
/// session cookie a page answers with a redirect to the log-in page.
#[derive(Debug, Clone)]
pub struct WebUser {
    pub caller: AuthUser,
    /// The session token (sent to the API as a bearer token by `forward`).
    pub token: String,
    /// This session's CSRF token, rendered into forms and the page's `<meta>`.
    pub csrf: String,
    /// The time zone times are shown in (cookie `haven_tz`, else UTC).
    pub tz: chrono_tz::Tz,
    pub client_addr: Option<SocketAddr>,
}

impl WebUser {
    /// Checks the CSRF token of a submitted form.
    pub fn csrf_ok(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| csrf_matches(&self.token, p))
    }

    pub fn has(&self, permission: crate::domain::permission::Permission) -> bool {
        self.caller.user.role.has(permission)
    }
}

/// The time zone of the `haven_tz` cookie, when it names one.
pub fn tz_from_headers(headers: &HeaderMap) -> chrono_tz::Tz {
    cookie(headers, TZ_COOKIE)
        .and_then(|name| {
            // The browser writes the cookie with `encodeURIComponent` (`Africa%2FNairobi`).
            name.replace("%2F", "/")
                .replace("%2f", "/")
                .parse::<chrono_tz::Tz>()
                .ok()
        })
        .unwrap_or(chrono_tz::UTC)
}

impl FromRequestParts<AppState> for WebUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let login = || {
            // Come back to the page after logging in (GET pages only: a form's POST
            // cannot be replayed). Page paths hold ids only, never patient data.
            let path = parts.uri.path();
            let target = if parts.method == Method::GET && path != "/" && !path.starts_with("//") {
                format!("/login?next={}", super::url_encode(path))
            } else {
                "/login".to_string()
            };
            Redirect::to(&target).into_response()
        };
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(login());
        };
        let hash = crate::auth::token_hash(&token);
        let user = match state
            .store
            .find_active_token(&hash, crate::domain::now())
            .await
        {
            Ok(Some(user)) => user,
            Ok(None) => return Err(login()),
            Err(e) => return Err(crate::http::error::AppError::from(e).into_response()),
        };
        let client = client_addr(parts);
        Ok(WebUser {
            caller: AuthUser {
                user,
                token_hash: hash,
                client_addr: client,
            },
            csrf: csrf_token(&token),
            token,
            tz: tz_from_headers(&parts.headers),
            client_addr: client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csrf_token_matches_its_session_only() {
        let token = crate::auth::new_token();
        let csrf = csrf_token(&token);
        assert!(csrf_matches(&token, &csrf));
        assert!(!csrf_matches(&crate::auth::new_token(), &csrf));
        assert!(!csrf_matches(&token, ""));
        assert!(!csrf_matches(&token, "not hex"));
        assert_ne!(csrf, crate::auth::token_hash(&token));
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; haven_session=abc; haven_tz=Africa%2FNairobi"
                .parse()
                .expect("header"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(tz_from_headers(&headers), chrono_tz::Africa::Nairobi);
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
