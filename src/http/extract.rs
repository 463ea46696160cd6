//! Request extractors: who is calling, may they do this, and the body and path parsed
//! into the JSON error shape on failure.

use std::marker::PhantomData;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde_json::json;
use uuid::Uuid;

use super::error::AppError;
use super::AppState;
use crate::audit::Actor;
use crate::auth::token_hash;
use crate::domain::permission::Permission;
use crate::store::User;

/// An authenticated caller. The organization of every request comes from here.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user: User,
    pub token_hash: String,
    pub client_addr: Option<SocketAddr>,
}

impl AuthUser {
    pub fn org(&self) -> Uuid {
        self.user.organization_id
    }

    /// The actor of audit entries written on this user's behalf.
    pub fn actor(&self) -> Actor {
        Actor {
            organization_id: self.user.organization_id,
            user_id: Some(self.user.id),
            client_addr: self.client_addr,
        }
    }
}

/// The client address, when the server was started with connect info.
pub fn client_addr(parts: &Parts) -> Option<SocketAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}

/// The token of a request: `Authorization: Bearer`, or the web UI's session cookie
/// together with its `X-CSRF-Token` header (see `crate::web::session`). A cookie
/// without that header is ignored: a cross-site page can make the browser send the
/// cookie, but it cannot read the page that holds the token.
fn presented_token(parts: &Parts) -> Option<String> {
    if let Some(text) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))?;
        return Some(token.trim().to_string());
    }
    crate::web::session::api_session_token(&parts.headers)
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token = presented_token(parts).ok_or(AppError::Unauthorized)?;
        let hash = token_hash(&token);
        let user = state
            .store
            .find_active_token(&hash, crate::domain::now())
            .await?
            .ok_or(AppError::Unauthorized)?;
        Ok(AuthUser {
            user,
            token_hash: hash,
            client_addr: client_addr(parts),
        })
    }
}

/// A permission as a type, so that handlers state what they need in their signature.
pub trait PermissionMarker: Send + Sync + 'static {
    const PERMISSION: Permission;
}

/// An authenticated caller holding permission `P`. A refusal answers 403 and is audited.
pub struct Require<P: PermissionMarker>(pub AuthUser, pub PhantomData<P>);

impl<P: PermissionMarker> FromRequestParts<AppState> for Require<P> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let caller = AuthUser::from_request_parts(parts, state).await?;
        if caller.user.role.has(P::PERMISSION) {
            return Ok(Require(caller, PhantomData));
        }
        let entry = caller.actor().entry(
            "permission.denied",
            "endpoint",
            Some(format!("{} {}", parts.method, parts.uri.path())),
            "denied",
            json!({"permission": P::PERMISSION.as_str(), "role": caller.user.role.as_str()}),
        );
        state.store.append_audit(entry).await?;
        Err(AppError::Forbidden(P::PERMISSION.as_str()))
    }
}

macro_rules! permission_markers {
    ($($name:ident => $perm:ident),* $(,)?) => {
        /// Marker types for [`Require`], one per permission of SPEC 2.
        pub mod perm {
            use crate::domain::permission::Permission;
            $(
                pub struct $name;
                impl super::PermissionMarker for $name {
                    const PERMISSION: Permission = Permission::$perm;
                }
            )*
        }
    };
}

permission_markers! {
    PatientsRead => PatientsRead,
    PatientsWrite => PatientsWrite,
    BulkRead => BulkRead,
    BulkImport => BulkImport,
    BulkExport => BulkExport,
    BulkUpdate => BulkUpdate,
    BulkDelete => BulkDelete,
    BulkRollback => BulkRollback,
    BulkCancel => BulkCancel,
    AuditRead => AuditRead,
    OrgAdmin => OrgAdmin,
}

/// The largest JSON body of any endpoint but the import (whose `csv_data` has its own
/// limit): larger bodies answer 413.
pub const MAX_JSON_BODY_BYTES: usize = 2 * 1024 * 1024;

/// A JSON body whose parse errors answer in the JSON error shape (400/413/422). Error
/// messages name the field but never quote the value sent, which may be a password.
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(JsonRejection::JsonDataError(e)) => {
                let (field, message) = describe_data_error(&e.body_text());
                Err(AppError::invalid_field(&field, "invalid_type", &message))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(AppError::BadRequest(
                "send the body as JSON with `Content-Type: application/json`".into(),
            )),
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(AppError::PayloadTooLarge(MAX_JSON_BODY_BYTES as u64))
            }
            Err(_) => Err(AppError::BadRequest(
                "the body is not valid JSON".to_string(),
            )),
        }
    }
}

/// The field and a message for a body of the right syntax but the wrong shape, from
/// axum's text `Failed to deserialize ...: PATH: ERROR at line L column C`. Serde's error
/// quotes the value it got (`invalid type: string "hunter2"`), so only a missing field
/// keeps its own words; everything else says what was expected without the value.
fn describe_data_error(text: &str) -> (String, String) {
    let detail = text
        .split_once("target type: ")
        .map(|(_, rest)| rest)
        .unwrap_or(text);
    let (path, error) = match detail.split_once(": ") {
        Some((path, error)) if !path.contains(' ') => (path.to_string(), error),
        _ => ("body".to_string(), detail),
    };
    let field = if path == "." {
        "body".to_string()
    } else {
        path
    };
    if let Some(rest) = error.strip_prefix("missing field `") {
        let name: String = rest.chars().take_while(|c| *c != '`').take(64).collect();
        return (name, "is required".to_string());
    }
    (field, "has the wrong type or an invalid value".to_string())
}

/// An id from the path. One that is not a UUID cannot exist, so it answers 404.
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| AppError::NotFound("resource"))?;
        Uuid::parse_str(&raw)
            .map(PathId)
            .map_err(|_| AppError::NotFound("resource"))
    }
}
