//! The web UI does what it changes through the API itself, in-process: a form is turned
//! into the API request a script would send, with the session's token as the bearer
//! token and the browser's address, and handed to the API router. Validation, role
//! checks, rate limits, throttled logins and audit entries are therefore exactly the
//! API's; the UI only translates forms and renders the answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

/// The API router, handed to the web routes as an extension.
#[derive(Clone)]
pub struct Api(pub Router);

/// The largest API answer the UI reads into memory (JSON answers are small; files are
/// streamed through `raw` instead).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// One API request made on behalf of a browser.
pub struct Call<'a> {
    pub method: Method,
    pub path: String,
    pub token: Option<&'a str>,
    pub client: Option<SocketAddr>,
    pub content_type: Option<String>,
    pub accept: Option<&'static str>,
    pub body: Body,
}

impl<'a> Call<'a> {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Call {
            method,
            path: path.into(),
            token: None,
            client: None,
            content_type: None,
            accept: None,
            body: Body::empty(),
        }
    }

    /// As this user, from this user's address.
    pub fn as_user(mut self, user: &'a super::session::WebUser) -> Self {
        self.token = Some(&user.token);
        self.client = user.client_addr;
        self
    }

    pub fn json(mut self, value: &Value) -> Self {
        self.content_type = Some("application/json".into());
        self.body = Body::from(value.to_string());
        self
    }
}

/// What the API answered, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// The `details` of a 422 as field → message (the first message per field), in
    /// the words of a form where the API's speak of its request.
    pub fn field_errors(&self) -> BTreeMap<String, String> {
        let mut errors = BTreeMap::new();
        if let Some(details) = self.body["error"]["details"].as_array() {
            for d in details {
                let field = d["field"].as_str().unwrap_or("form").to_string();
                let code = d["code"].as_str().unwrap_or("");
                let message = form_words(&field, code)
                    .map(str::to_string)
                    .unwrap_or_else(|| d["message"].as_str().unwrap_or("is not valid").to_string());
                errors.entry(field).or_insert(message);
            }
        }
        errors
    }

    /// The error message of a non-success answer.
    pub fn message(&self) -> String {
        self.body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the request failed ({})", self.status))
    }
}

/// Form wording for the API messages that name request parts rather than fields.
fn form_words(field: &str, code: &str) -> Option<&'static str> {
    Some(match (field, code) {
        ("file", "required") => "choose the CSV file to import",
        ("scheduled_at", "in_past") => "is in the past: choose a time from now on, or Run now",
        ("scheduled_at", "too_far") => "is more than a year ahead: choose an earlier time",
        _ => return None,
    })
}

impl Api {
    /// Sends the request through the API router and returns its response as is (for
    /// downloads, streamed).
    pub async fn raw(&self, call: Call<'_>) -> Response {
        let mut builder = Request::builder().method(call.method).uri(&call.path);
        if let Some(token) = call.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(ct) = &call.content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        if let Some(accept) = call.accept {
            builder = builder.header(header::ACCEPT, HeaderValue::from_static(accept));
        }
        let mut request = match builder.body(call.body) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "building an in-process API request failed");
                return crate::http::error::AppError::Internal(e.into()).into_response();
            }
        };
        // The API's login and audit entries read the client address from here.
        let addr = call
            .client
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        request.extensions_mut().insert(ConnectInfo(addr));
        match self.0.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    /// Sends the request and reads the JSON answer.
    pub async fn call(&self, call: Call<'_>) -> Answer {
        let response = self.raw(call).await;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
            .await
            .unwrap_or_else(|_| Bytes::new());
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer { status, body }
    }
}
