//! One error type for every handler, answering the JSON body of SPEC 4.2:
//! `{"error":{"code","message","details":[{"field","message"}]}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::FieldError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("authentication required: send a valid token as `Authorization: Bearer TOKEN`")]
    Unauthorized,
    #[error("invalid email or password")]
    BadCredentials,
    #[error("your role does not have the permission {0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("the method {0} is not allowed on this path (see the Allow header)")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Validation {
        message: String,
        details: Vec<FieldError>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("the upload is larger than the limit of {0} bytes")]
    PayloadTooLarge(u64),
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{message}")]
    ServiceUnavailable {
        message: String,
        retry_after_secs: u64,
    },
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    /// A 422 for a list of field problems.
    pub fn invalid(details: Vec<FieldError>) -> Self {
        let fields: Vec<&str> = details.iter().map(|d| d.field.as_str()).collect();
        AppError::Validation {
            message: format!("invalid input: {}", fields.join(", ")),
            details,
        }
    }

    /// A 422 for one field.
    pub fn invalid_field(field: &str, code: &str, message: &str) -> Self {
        Self::invalid(vec![FieldError::new(field, code, message)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthorized | AppError::BadCredentials => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::ServiceUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            AppError::Unauthorized => "unauthorized",
            AppError::BadCredentials => "invalid_credentials",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotFound(_) => "not_found",
            AppError::MethodNotAllowed(_) => "method_not_allowed",
            AppError::Conflict(_) => "conflict",
            AppError::Validation { .. } => "validation_failed",
            AppError::BadRequest(_) => "bad_request",
            AppError::PayloadTooLarge(_) => "payload_too_large",
            AppError::TooManyRequests { .. } => "too_many_requests",
            AppError::ServiceUnavailable { .. } => "service_unavailable",
            AppError::Internal(_) => "internal_error",
        }
    }
}

impl From<StoreError> for AppError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => AppError::NotFound("resource"),
            StoreError::VersionConflict => AppError::Conflict(
                "the record was changed by someone else since you read it: reload it and apply your change to the current version".into(),
            ),
            StoreError::Duplicate(field) => AppError::invalid_field(
                field,
                "duplicate",
                "is already used by another record of your organization",
            ),
            other => AppError::Internal(other.into()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let AppError::Internal(err) = &self {
            // Logged with its chain for operators; the client sees an opaque message.
            tracing::error!(error = format!("{err:#}"), "request failed");
        }
        let details: Vec<_> = match &self {
            AppError::Validation { details, .. } => details
                .iter()
                .map(|d| json!({"field": d.field, "code": d.code, "message": d.message}))
                .collect(),
            _ => Vec::new(),
        };
        let body = json!({"error": {"code": self.code(), "message": self.to_string(), "details": details}});
        let mut response = (status, axum::Json(body)).into_response();
        if let AppError::TooManyRequests {
            retry_after_secs, ..
        }
        | AppError::ServiceUnavailable {
            retry_after_secs, ..
        } = &self
        {
            if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
