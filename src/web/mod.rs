//! The web UI of SPEC 8: pages rendered on the server from templates compiled into the
//! binary, one stylesheet and one small script of our own (no build step, nothing from
//! another site).
//!
//! - `session`: the session cookie, CSRF tokens and the logged-in-user extractor;
//! - `forward`: what a form changes goes through the API in-process;
//! - `auth`: log in and out; `dashboard`: the operations dashboard and operation page;
//! - `forms`: the import, export, update and delete forms; `pages`: notifications,
//!   patients, audit log, users, recurring schedules;
//! - `view`: how operations, times and results are shown.

mod auth;
mod dashboard;
mod forms;
pub mod forward;
mod pages;
pub mod session;
mod view;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use minijinja::Environment;
use serde_json::{json, Value};

use crate::http::AppState;
use session::WebUser;

/// The templates, parsed once at start. Compiled into the binary with `include_str!`.
pub struct Templates(Environment<'static>);

/// Every template by name.
const TEMPLATES: [(&str, &str); 17] = [
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("login.html", include_str!("templates/login.html")),
    ("dashboard.html", include_str!("templates/dashboard.html")),
    ("op_row.html", include_str!("templates/op_row.html")),
    ("operation.html", include_str!("templates/operation.html")),
    ("import.html", include_str!("templates/import.html")),
    ("export.html", include_str!("templates/export.html")),
    ("update.html", include_str!("templates/update.html")),
    ("delete.html", include_str!("templates/delete.html")),
    (
        "notifications.html",
        include_str!("templates/notifications.html"),
    ),
    ("patients.html", include_str!("templates/patients.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("users.html", include_str!("templates/users.html")),
    ("schedules.html", include_str!("templates/schedules.html")),
    ("error.html", include_str!("templates/error.html")),
    (
        "schedule_fields.html",
        include_str!("templates/schedule_fields.html"),
    ),
];

const APP_CSS: &str = include_str!("static/app.css");
const APP_JS: &str = include_str!("static/app.js");

impl Templates {
    /// Parses every template; a syntax error is a bug found by the first test.
    pub fn load() -> anyhow::Result<Templates> {
        let mut env = Environment::new();
        // `.html` templates escape every value unless marked safe.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .map_err(|e| anyhow::anyhow!("template {name}: {e:#}"))?;
        }
        Ok(Templates(env))
    }

    /// Renders a page; a rendering error is logged and answered as an opaque 500.
    pub fn render(&self, name: &str, ctx: Value) -> Response {
        self.render_with(StatusCode::OK, name, ctx)
    }

    pub fn render_with(&self, status: StatusCode, name: &str, ctx: Value) -> Response {
        let rendered = self
            .0
            .get_template(name)
            .and_then(|t| t.render(minijinja::value::Serde(&ctx)));
        match rendered {
            Ok(html) => (status, Html(html)).into_response(),
            Err(e) => {
                tracing::error!(
                    template = name,
                    error = format!("{e:#}"),
                    "rendering failed"
                );
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
        }
    }
}

/// What every web handler reaches besides the app state.
#[derive(Clone)]
pub struct Web {
    pub api: forward::Api,
    pub templates: Arc<Templates>,
}

/// The web UI's routes. `api` is the finished API router the forms are sent through.
pub fn routes(api: Router) -> anyhow::Result<Router<AppState>> {
    let web = Web {
        api: forward::Api(api),
        templates: Arc::new(Templates::load()?),
    };
    Ok(Router::new()
        .route("/", get(dashboard::dashboard))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/operations/{id}", get(dashboard::operation_page))
        .route("/operations/{id}/row", get(dashboard::operation_row))
        .route("/operations/{id}/cancel", post(dashboard::cancel))
        .route("/operations/{id}/rollback", post(dashboard::rollback))
        .route("/operations/{id}/download", get(dashboard::download))
        .route("/operations/{id}/errors.csv", get(dashboard::error_report))
        .route(
            "/import",
            get(forms::form_page)
                .post(forms::import_submit)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/import/mapping", post(forms::import_mapping))
        .route("/export", get(forms::form_page).post(forms::export_submit))
        .route("/update", get(forms::form_page).post(forms::update_submit))
        .route("/delete", get(forms::form_page).post(forms::delete_submit))
        .route("/notifications", get(pages::notifications))
        .route("/notifications/read", post(pages::notifications_read))
        .route(
            "/notifications/preferences",
            post(pages::notifications_preferences),
        )
        .route("/patients", get(pages::patients))
        .route("/audit", get(pages::audit))
        .route("/users", get(pages::users))
        .route("/schedules", get(pages::schedules))
        .route("/static/app.css", get(stylesheet))
        .route("/static/app.js", get(script))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(Extension(web)))
}

/// The Content-Security-Policy of every page: our own script, style and connections
/// only, no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    // Pages show patient data: no copy in shared caches or the browser's history cache.
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        APP_CSS,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        APP_JS,
    )
        .into_response()
}

/// Percent-encodes a query-string value.
pub fn url_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// What every page's layout needs: the user, the CSRF token, the navigation allowed
/// by the role and the unread notification count.
pub async fn page_context(state: &AppState, user: &WebUser, nav: &str) -> Value {
    use crate::domain::permission::Permission as P;
    let unread = state
        .store
        .unread_count(user.caller.org(), user.caller.user.id)
        .await
        .unwrap_or(0);
    json!({
        "nav": nav,
        "csrf": user.csrf,
        "tz": user.tz.name(),
        "unread": unread,
        "user": {
            "email": user.caller.user.email,
            "role": user.caller.user.role.as_str(),
            "role_label": view::role_label(user.caller.user.role),
        },
        "can": {
            "import": user.has(P::BulkImport),
            "export": user.has(P::BulkExport),
            "update": user.has(P::BulkUpdate),
            "delete": user.has(P::BulkDelete),
            "audit": user.has(P::AuditRead),
            "admin": user.has(P::OrgAdmin),
        },
    })
}

/// Adds the keys of `extra` to a page context.
pub fn with(mut ctx: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(more)) = (ctx.as_object_mut(), extra) {
        base.extend(more);
    }
    ctx
}

/// A page that says what went wrong (403, 404, 409...), inside the layout.
pub async fn error_page(
    state: &AppState,
    web: &Web,
    user: &WebUser,
    status: StatusCode,
    message: &str,
) -> Response {
    let ctx = page_context(state, user, "").await;
    web.templates.render_with(
        status,
        "error.html",
        with(
            ctx,
            json!({"status": status.as_u16(), "title": status.canonical_reason().unwrap_or("Error"), "message": message}),
        ),
    )
}

/// A refused form (no or wrong CSRF token): 403 with a page saying to reload.
pub async fn csrf_refused(state: &AppState, web: &Web, user: &WebUser) -> Response {
    error_page(
        state,
        web,
        user,
        StatusCode::FORBIDDEN,
        "This form could not be checked (its security token is missing or out of date). Reload the page and submit it again.",
    )
    .await
}

/// A page the role does not allow: 403, with the same audit entry as the API's.
pub async fn permission_refused(
    state: &AppState,
    web: &Web,
    user: &WebUser,
    permission: crate::domain::permission::Permission,
    path: &str,
) -> Response {
    let entry = user.caller.actor().entry(
        "permission.denied",
        "page",
        Some(format!("GET {path}")),
        "denied",
        json!({"permission": permission.as_str(), "role": user.caller.user.role.as_str()}),
    );
    if let Err(e) = state.store.append_audit(entry).await {
        return crate::http::error::AppError::from(e).into_response();
    }
    error_page(
        state,
        web,
        user,
        StatusCode::FORBIDDEN,
        &format!(
            "Your role ({}) does not allow this page.",
            view::role_label(user.caller.user.role)
        ),
    )
    .await
}
