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

/// A JSON body whose parse errors answer in the JSON error shape (400/422).
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
            Err(JsonRejection::JsonDataError(e)) => Err(AppError::invalid_field(
                "body",
                "invalid_type",
                &e.body_text(),
            )),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(AppError::BadRequest(
                "send the body as JSON with `Content-Type: application/json`".into(),
            )),
            Err(e) => Err(AppError::BadRequest(format!(
                "the body is not valid JSON: {}",
                e.body_text()
            ))),
        }
    }
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
