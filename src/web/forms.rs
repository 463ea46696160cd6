//! The four scheduling forms: import, export, update, delete. Each is turned into the
//! API's scheduling request (SPEC 4.2) and sent in-process; a 422's `details` come back
//! as messages beside the fields, a 201 leads to the dashboard with the new operation
//! highlighted.
//!
//! Every form shares "Run now / Schedule for later" with a date and time in a named
//! time zone (converted here, with the zone's daylight-saving rules), the email toggle,
//! dry run and dependencies (`schedule_fields.html`).

use std::collections::{BTreeMap, HashSet};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use chrono::{NaiveDateTime, TimeZone};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::dashboard::dependable;
use super::forward::{Answer, Call};
use super::session::{self, WebUser};
use super::{page_context, with, Web};
use crate::domain::filters::PatientFilters;
use crate::domain::operation::Targets;
use crate::domain::patient::{SYSTEM_FIELDS, WRITABLE_FIELDS};
use crate::domain::permission::Permission;
use crate::formats::export::DEFAULT_EXPORT_FIELDS;
use crate::http::AppState;

/// Field errors by the API's field name (`scheduled_at`, `filters.gender`, ...).
type Errors = BTreeMap<String, String>;

/// A submitted form with its repeated keys kept (checkbox groups).
#[derive(Debug, Default, Clone)]
pub struct FormData(Vec<(String, String)>);

impl FormData {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A trimmed, non-empty value.
    fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn checked(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v == "on" || v == "true")
    }

    fn push(&mut self, name: String, value: String) {
        self.0.push((name, value));
    }

    /// The values as an object for re-rendering the form (first value per key, plus
    /// `depends_on` and `fields` as lists). The password-free forms only.
    fn values(&self) -> Value {
        let mut map = Map::new();
        for (k, v) in &self.0 {
            if k == session::CSRF_FIELD {
                continue;
            }
            map.entry(k.clone())
                .or_insert_with(|| Value::String(v.clone()));
        }
        map.insert("depends_on".into(), json!(self.all("depends_on")));
        map.insert("fields".into(), json!(self.all("fields")));
        Value::Object(map)
    }
}

impl<S: Send + Sync> FromRequest<S> for FormData {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let Form(pairs) = Form::<Vec<(String, String)>>::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(FormData(pairs))
    }
}

/// The scheduling options every form shares, as the API takes them. Problems the UI
/// finds itself (a time that does not exist in the zone) go into `errors` under the
/// API's field names.
fn common_options(form: &FormData, errors: &mut Errors) -> Map<String, Value> {
    let mut options = Map::new();
    let tz_name = form.text("timezone").unwrap_or_else(|| "UTC".into());
    let tz = match tz_name.parse::<chrono_tz::Tz>() {
        Ok(tz) => Some(tz),
        Err(_) => {
            errors.insert(
                "timezone".into(),
                "is not a time zone: choose one from the list, such as Africa/Nairobi".into(),
            );
            None
        }
    };
    options.insert("timezone".into(), json!(tz_name));
    if form.get("when") == Some("later") {
        match (form.text("scheduled_local"), tz) {
            (None, _) => {
                errors.insert(
                    "scheduled_at".into(),
                    "choose the date and time to run it, or choose Run now".into(),
                );
            }
            (Some(local), Some(tz)) => {
                let parsed = NaiveDateTime::parse_from_str(&local, "%Y-%m-%dT%H:%M")
                    .or_else(|_| NaiveDateTime::parse_from_str(&local, "%Y-%m-%dT%H:%M:%S"));
                match parsed {
                    Err(_) => {
                        errors.insert(
                            "scheduled_at".into(),
                            "is not a date and time such as 2026-12-01 02:00".into(),
                        );
                    }
                    Ok(naive) => match tz.from_local_datetime(&naive).earliest() {
                        Some(at) => {
                            options.insert("scheduled_at".into(), json!(at.to_rfc3339()));
                        }
                        None => {
                            errors.insert(
                                "scheduled_at".into(),
                                format!("does not exist in {tz}: the clocks skip that hour (daylight saving); choose another time"),
                            );
                        }
                    },
                }
            }
            (Some(_), None) => {}
        }
    }
    options.insert(
        "email_notification".into(),
        json!(form.checked("email_notification")),
    );
    options.insert("dry_run".into(), json!(form.checked("dry_run")));
    let deps = form.all("depends_on");
    if !deps.is_empty() {
        options.insert("depends_on".into(), json!(deps));
    }
    options
}

/// The filter inputs (`filters.NAME`) as the API's `filters` object, empty ones left out.
fn filters_from(form: &FormData) -> Map<String, Value> {
    let mut filters = Map::new();
    for name in crate::domain::filters::FILTER_NAMES {
        let Some(value) = form.text(&format!("filters.{name}")) else {
            continue;
        };
        let value = if name == "unhcr_numbers" || name == "patient_ids" {
            json!(split_list(&value))
        } else {
            json!(value)
        };
        filters.insert(name.to_string(), value);
    }
    filters
}

/// Ids or numbers pasted one per line, or separated by commas, spaces or semicolons.
fn split_list(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Targets of an update or delete as the API takes them (`patient_ids` or `filters`).
fn targets_from(form: &FormData) -> Map<String, Value> {
    let mut body = Map::new();
    if form.get("target_kind") == Some("ids") {
        body.insert(
            "patient_ids".into(),
            json!(split_list(form.get("patient_ids").unwrap_or(""))),
        );
    } else {
        body.insert("filters".into(), Value::Object(filters_from(form)));
    }
    body
}

/// What a 201 leads to: the dashboard, the new operation highlighted.
fn scheduled(answer: &Answer) -> Response {
    let id = answer.body["id"].as_str().unwrap_or_default();
    Redirect::to(&format!("/?notice=scheduled&highlight={id}")).into_response()
}

/// The message shown above a form for an answer that is neither 201 nor 422.
fn form_error(answer: &Answer) -> String {
    match answer.status {
        StatusCode::FORBIDDEN => "Your role does not allow this operation.".into(),
        StatusCode::PAYLOAD_TOO_LARGE => format!("The file is too large: {}", answer.message()),
        _ => answer.message(),
    }
}

/// The fields of a patient that can be exported, in a sensible order.
fn exportable_fields(chosen: &[String]) -> Vec<Value> {
    ["id"]
        .into_iter()
        .chain(WRITABLE_FIELDS)
        .chain(SYSTEM_FIELDS.into_iter().filter(|f| {
            !matches!(*f, "id" | "organization_id" | "deleted_at")
        }))
        .map(|f| {
            json!({
                "name": f,
                "checked": if chosen.is_empty() { DEFAULT_EXPORT_FIELDS.contains(&f) } else { chosen.iter().any(|c| c == f) },
            })
        })
        .collect()
}

/// One of the four forms: its template, navigation entry, permission and path.
struct FormPage {
    template: &'static str,
    nav: &'static str,
    permission: Permission,
    path: &'static str,
}

#[derive(Clone, Copy)]
enum Kind {
    Import,
    Export,
    Update,
    Delete,
}

impl Kind {
    fn from_path(path: &str) -> Option<Kind> {
        Some(match path {
            "/import" => Kind::Import,
            "/export" => Kind::Export,
            "/update" => Kind::Update,
            "/delete" => Kind::Delete,
            _ => return None,
        })
    }

    fn page(self) -> FormPage {
        let (template, nav, permission) = match self {
            Kind::Import => ("import.html", "import", Permission::BulkImport),
            Kind::Export => ("export.html", "export", Permission::BulkExport),
            Kind::Update => ("update.html", "update", Permission::BulkUpdate),
            Kind::Delete => ("delete.html", "delete", Permission::BulkDelete),
        };
        FormPage {
            template,
            nav,
            permission,
            path: match self {
                Kind::Import => "/import",
                Kind::Export => "/export",
                Kind::Update => "/update",
                Kind::Delete => "/delete",
            },
        }
    }
}

/// A form as it first appears (`GET /import`, `/export`, `/update`, `/delete`).
pub async fn form_page(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    user: WebUser,
    uri: axum::http::Uri,
) -> Response {
    let Some(kind) = Kind::from_path(uri.path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let extra = match kind {
        Kind::Export => json!({"export_fields": exportable_fields(&[])}),
        _ => json!({}),
    };
    render_form(
        &state,
        &web,
        &user,
        kind.page(),
        StatusCode::OK,
        &FormData::default(),
        extra,
    )
    .await
}

/// A submitted (URL-encoded) form of a logged-in user whose CSRF token checked out.
/// Otherwise the request is answered with the log-in redirect or the 403 page.
pub struct Submitted {
    pub user: WebUser,
    pub form: FormData,
}

impl FromRequest<AppState> for Submitted {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        use axum::extract::FromRequestParts;
        let (mut parts, body) = req.into_parts();
        let user = WebUser::from_request_parts(&mut parts, state).await?;
        let web = parts.extensions.get::<Web>().cloned();
        let form = FormData::from_request(Request::from_parts(parts, body), state).await?;
        if !user.csrf_ok(form.get(session::CSRF_FIELD)) {
            return Err(match web {
                Some(web) => super::csrf_refused(state, &web, &user).await,
                None => StatusCode::FORBIDDEN.into_response(),
            });
        }
        Ok(Submitted { user, form })
    }
}

/// Renders one of the forms with the values to show again and the errors.
async fn render_form(
    state: &AppState,
    web: &Web,
    user: &WebUser,
    page: FormPage,
    status: StatusCode,
    form: &FormData,
    extra: Value,
) -> Response {
    if !user.has(page.permission) {
        return super::permission_refused(state, web, user, page.permission, page.path).await;
    }
    let chosen: HashSet<String> = form.all("depends_on").into_iter().collect();
    let ctx = page_context(state, user, page.nav).await;
    let mut values = form.values();
    if form.get("when").is_none() {
        values["when"] = json!("now");
    }
    let fresh = form.0.is_empty();
    let ctx = with(
        ctx,
        json!({
            "values": values,
            "fresh": fresh,
            "dependable": dependable(state, user, &chosen).await,
            "writable_fields": WRITABLE_FIELDS,
            "errors": {},
        }),
    );
    web.templates
        .render_with(status, page.template, with(ctx, extra))
}

/// The detected mapping of a file's header row, for the preview (the script sends the
/// column names only; the rows stay in the browser).
pub async fn import_mapping(
    user: WebUser,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let presented = headers
        .get(session::CSRF_HEADER)
        .and_then(|v| v.to_str().ok());
    if !user.csrf_ok(presented) || !user.has(Permission::BulkImport) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let header: Vec<String> = body["columns"]
        .as_array()
        .map(|cols| {
            cols.iter()
                .take(500)
                .map(|c| c.as_str().unwrap_or("").chars().take(200).collect())
                .collect()
        })
        .unwrap_or_default();
    let (targets, problems) = match crate::formats::csv_import::plan_columns(&header, None) {
        Ok(plan) => (plan.targets, Vec::new()),
        // Still show what each column matched, with the problems of the whole.
        Err(errors) => (
            auto_targets(&header),
            errors.into_iter().map(|e| e.message).collect(),
        ),
    };
    Json(json!({
        "columns": header.iter().zip(targets).map(|(name, field)| json!({"name": name, "field": field})).collect::<Vec<_>>(),
        "fields": WRITABLE_FIELDS,
        "problems": problems,
    }))
    .into_response()
}

/// Column by column, the field each header names by itself (when the plan as a whole
/// failed, for example because no column feeds a required field).
fn auto_targets(header: &[String]) -> Vec<Option<&'static str>> {
    header
        .iter()
        .map(|cell| {
            crate::formats::csv_import::plan_columns(std::slice::from_ref(cell), None)
                .ok()
                .and_then(|p| p.targets.first().copied().flatten())
                .or_else(|| {
                    // A lone column fails the required-field check; try it beside the
                    // two required names so only its own match is read.
                    let probe = [cell.clone(), "given_name".into(), "family_name".into()];
                    crate::formats::csv_import::plan_columns(&probe, None)
                        .ok()
                        .and_then(|p| p.targets.first().copied().flatten())
                })
        })
        .collect()
}

/// Why the upload stream to the API was stopped.
enum Stop {
    /// The CSRF field was missing or wrong (or came after the file).
    Csrf,
    /// The browser's body was malformed.
    Malformed,
}

fn part_header(boundary: &str, name: &str, file_name: Option<&str>) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c == '"' || c.is_control() { '_' } else { c })
            .collect()
    };
    match file_name {
        Some(f) => format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: text/csv\r\n\r\n",
            clean(name),
            clean(f)
        ),
        None => format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n",
            clean(name)
        ),
    }
}

/// The import form: the browser's multipart body is read part by part; the file is
/// streamed to the API's import endpoint as it arrives (never held in memory), and
/// the options follow it once all of them are known.
pub async fn import_submit(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    user: WebUser,
    request: Request,
) -> Response {
    let page = Kind::Import.page();
    if !user.has(Permission::BulkImport) {
        return super::permission_refused(&state, &web, &user, page.permission, page.path).await;
    }
    if !session::same_origin(request.headers()) {
        return super::csrf_refused(&state, &web, &user).await;
    }
    let mut multipart = match axum::extract::Multipart::from_request(request, &()).await {
        Ok(m) => m,
        Err(_) => return super::csrf_refused(&state, &web, &user).await,
    };
    let boundary = format!("haven-ui-{}", uuid::Uuid::new_v4().simple());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut call = Call::new(Method::POST, "/api/v2/bulk/import/schedule").as_user(&user);
    call.content_type = Some(format!("multipart/form-data; boundary={boundary}"));
    call.body = Body::from_stream(stream);

    // The pump owns the only sender: when it ends, the body the API reads ends.
    let (user_ref, boundary_ref) = (&user, &boundary);
    let pump = async move {
        let tx = tx;
        let mut form = FormData::default();
        let mut ui_errors = Errors::new();
        let send = |bytes: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(bytes)).await.is_ok() }
        };
        loop {
            let mut field = match multipart.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return Err(Stop::Malformed),
            };
            let name = field.name().unwrap_or("").to_string();
            if name != "file" {
                let text = field.text().await.map_err(|_| Stop::Malformed)?;
                form.push(name, text.chars().take(256 * 1024).collect());
                continue;
            }
            // The token comes first in the form: nothing reaches the API before it is checked.
            if !user_ref.csrf_ok(form.get(session::CSRF_FIELD)) {
                return Err(Stop::Csrf);
            }
            let file_name = field.file_name().unwrap_or("").to_string();
            if file_name.is_empty() {
                // No file chosen: the browser sends an empty part; the API says it is missing.
                continue;
            }
            form.push("file_name".into(), file_name.clone());
            if !send(Bytes::from(part_header(
                boundary_ref,
                "file",
                Some(&file_name),
            )))
            .await
            {
                return Ok((form, ui_errors));
            }
            loop {
                match field.chunk().await {
                    Ok(Some(bytes)) => {
                        if !send(bytes).await {
                            return Ok((form, ui_errors));
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return Err(Stop::Malformed),
                }
            }
            if !send(Bytes::from_static(b"\r\n")).await {
                return Ok((form, ui_errors));
            }
        }
        if !user_ref.csrf_ok(form.get(session::CSRF_FIELD)) {
            return Err(Stop::Csrf);
        }
        let mut options = common_options(&form, &mut ui_errors);
        for key in ["mode", "on_error", "date_format"] {
            if let Some(v) = form.text(key) {
                options.insert(key.into(), json!(v));
            }
        }
        if let Some(mapping) = form.text("field_mapping").filter(|m| m != "{}") {
            options.insert("field_mapping".into(), json!(mapping));
        }
        if !ui_errors.is_empty() {
            // The API must not accept a request the UI could not translate: end its body
            // with an error so that it stops and removes what it stored.
            let _ = tx.send(Err(std::io::Error::other("form not valid"))).await;
            return Ok((form, ui_errors));
        }
        let mut tail = String::new();
        for (key, value) in options {
            let text = match value {
                Value::String(s) => s,
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            tail.push_str(&part_header(boundary_ref, &key, None));
            tail.push_str(&text);
            tail.push_str("\r\n");
        }
        tail.push_str(&format!("--{boundary_ref}--\r\n"));
        send(Bytes::from(tail)).await;
        Ok((form, ui_errors))
    };
    let (answer, pumped) = tokio::join!(web.api.call(call), pump);
    let (form, ui_errors) = match pumped {
        Ok(done) => done,
        Err(Stop::Csrf) => return super::csrf_refused(&state, &web, &user).await,
        Err(Stop::Malformed) => {
            return super::error_page(
                &state,
                &web,
                &user,
                StatusCode::BAD_REQUEST,
                "The upload was interrupted. Please try again.",
            )
            .await
        }
    };
    if ui_errors.is_empty() && answer.status == StatusCode::CREATED {
        return scheduled(&answer);
    }
    let (errors, message, status) = if !ui_errors.is_empty() {
        (ui_errors, None, StatusCode::UNPROCESSABLE_ENTITY)
    } else if answer.status == StatusCode::UNPROCESSABLE_ENTITY {
        (answer.field_errors(), None, answer.status)
    } else {
        (Errors::new(), Some(form_error(&answer)), answer.status)
    };
    render_form(
        &state,
        &web,
        &user,
        page,
        status,
        &form,
        json!({"errors": errors, "error": message}),
    )
    .await
}

/// A JSON scheduling request built from a form: the API path, its body, the problems
/// the UI found itself, and what the form page needs besides.
struct JsonRequest<'a> {
    path: &'a str,
    body: Map<String, Value>,
    ui_errors: Errors,
    extra: Value,
}

/// Sends a JSON scheduling request built from a form and answers as every form does.
async fn submit_json(
    state: &AppState,
    web: &Web,
    user: &WebUser,
    page: FormPage,
    form: &FormData,
    request: JsonRequest<'_>,
) -> Response {
    let JsonRequest {
        path,
        body,
        ui_errors,
        extra,
    } = request;
    if !ui_errors.is_empty() {
        let ctx = with(extra, json!({"errors": ui_errors}));
        return render_form(
            state,
            web,
            user,
            page,
            StatusCode::UNPROCESSABLE_ENTITY,
            form,
            ctx,
        )
        .await;
    }
    let answer = web
        .api
        .call(
            Call::new(Method::POST, path)
                .as_user(user)
                .json(&Value::Object(body)),
        )
        .await;
    if answer.status == StatusCode::CREATED {
        return scheduled(&answer);
    }
    let errors = answer.field_errors();
    let message = (answer.status != StatusCode::UNPROCESSABLE_ENTITY).then(|| form_error(&answer));
    let ctx = with(extra, json!({"errors": errors, "error": message}));
    render_form(state, web, user, page, answer.status, form, ctx).await
}

pub async fn export_submit(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    Submitted { user, form }: Submitted,
) -> Response {
    let mut errors = Errors::new();
    let mut body = common_options(&form, &mut errors);
    body.insert(
        "format".into(),
        json!(form.text("format").unwrap_or_else(|| "csv".into())),
    );
    let fields = form.all("fields");
    body.insert("fields".into(), json!(fields));
    body.insert("filters".into(), Value::Object(filters_from(&form)));
    body.insert(
        "include_deleted".into(),
        json!(form.checked("include_deleted")),
    );
    let extra = json!({"export_fields": exportable_fields(&fields)});
    submit_json(
        &state,
        &web,
        &user,
        Kind::Export.page(),
        &form,
        JsonRequest {
            path: "/api/v2/bulk/export/schedule",
            body,
            ui_errors: errors,
            extra,
        },
    )
    .await
}

/// How many live patients the targets of an update or delete match, with a key that
/// changes when the targets do (a confirmation must follow a preview of the same
/// targets). Problems are field errors under the API's names.
async fn preview(
    state: &AppState,
    user: &WebUser,
    targets: &Map<String, Value>,
) -> Result<(i64, String), Errors> {
    let parsed = if let Some(ids) = targets.get("patient_ids") {
        let list: Vec<String> = serde_json::from_value(ids.clone()).unwrap_or_default();
        if list.is_empty() {
            return Err(Errors::from([(
                "patient_ids".to_string(),
                "paste at least one patient id".to_string(),
            )]));
        }
        let mut ids = Vec::new();
        for text in &list {
            match uuid::Uuid::parse_str(text) {
                Ok(id) => ids.push(id),
                Err(_) => {
                    return Err(Errors::from([(
                        "patient_ids".to_string(),
                        "holds something that is not a patient id (ids look like 0190a5e4-…)"
                            .to_string(),
                    )]))
                }
            }
        }
        Targets::PatientIds(ids)
    } else {
        let filters = targets.get("filters").cloned().unwrap_or(json!({}));
        match PatientFilters::from_json(&filters, "filters") {
            Ok(f) => Targets::Filters(f),
            Err(errors) => return Err(errors.into_iter().map(|e| (e.field, e.message)).collect()),
        }
    };
    let filters = parsed.as_filters();
    let count = state
        .store
        .count_patients(crate::store::ops::PatientScan {
            org: user.caller.org(),
            filters: &filters,
            include_deleted: false,
            imported_by: None,
            page: crate::store::Page {
                after: None,
                limit: 1,
            },
        })
        .await
        .map_err(|_| {
            Errors::from([(
                "form".to_string(),
                "the patients could not be counted; try again".to_string(),
            )])
        })?;
    let key = hex::encode(Sha256::digest(
        Value::Object(targets.clone()).to_string().as_bytes(),
    ));
    Ok((count, key))
}

/// Rows of changes in the update form.
const CHANGE_ROWS: usize = 3;

/// The update form's changes: up to three rows of field, new value, or "clear".
fn changes_from(form: &FormData) -> Map<String, Value> {
    let mut changes = Map::new();
    for i in 1..=CHANGE_ROWS {
        let Some(field) = form.text(&format!("change_field_{i}")) else {
            continue;
        };
        let value = if form.checked(&format!("change_clear_{i}")) {
            Value::Null
        } else {
            match form.text(&format!("change_value_{i}")) {
                Some(v) if crate::domain::patient::LIST_FIELDS.contains(&field.as_str()) => {
                    json!(v
                        .split(';')
                        .map(|s| s.trim())
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>())
                }
                Some(v) => json!(v),
                None => Value::Null,
            }
        };
        changes.insert(field, value);
    }
    changes
}

/// Update and delete share their flow (the CSRF token is checked by [`Submitted`]): a preview of how many patients match, then the
/// confirmation, which is refused if the targets changed after the preview.
async fn modify_submit(
    state: AppState,
    web: Web,
    user: WebUser,
    form: FormData,
    delete: bool,
) -> Response {
    let page = if delete {
        Kind::Delete.page()
    } else {
        Kind::Update.page()
    };
    if !user.has(page.permission) {
        return super::permission_refused(&state, &web, &user, page.permission, page.path).await;
    }
    let targets = targets_from(&form);
    let (count, key) = match preview(&state, &user, &targets).await {
        Ok(p) => p,
        Err(errors) => {
            return render_form(
                &state,
                &web,
                &user,
                page,
                StatusCode::UNPROCESSABLE_ENTITY,
                &form,
                json!({"errors": errors}),
            )
            .await
        }
    };
    let preview = json!({"count": count, "key": key});
    let confirming = form.get("action") == Some("confirm");
    if !confirming || form.get("preview_key") != Some(key.as_str()) {
        let changed = confirming.then_some(
            "The patients chosen changed since the preview: check the new count, then confirm.",
        );
        return render_form(
            &state,
            &web,
            &user,
            page,
            StatusCode::OK,
            &form,
            json!({"preview": preview, "error": changed}),
        )
        .await;
    }
    let mut errors = Errors::new();
    let mut body = common_options(&form, &mut errors);
    body.extend(targets);
    let path = if delete {
        let typed = form.text("confirm_text").unwrap_or_default();
        if !typed.eq_ignore_ascii_case("delete") {
            errors.insert(
                "confirm".into(),
                "type DELETE to confirm that these patients are to be deleted".into(),
            );
        }
        body.insert("confirm".into(), json!(true));
        "/api/v2/bulk/delete/schedule"
    } else {
        body.insert("changes".into(), Value::Object(changes_from(&form)));
        "/api/v2/bulk/update/schedule"
    };
    submit_json(
        &state,
        &web,
        &user,
        page,
        &form,
        JsonRequest {
            path,
            body,
            ui_errors: errors,
            extra: json!({"preview": preview}),
        },
    )
    .await
}

pub async fn update_submit(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    Submitted { user, form }: Submitted,
) -> Response {
    modify_submit(state, web, user, form, false).await
}

pub async fn delete_submit(
    State(state): State<AppState>,
    Extension(web): Extension<Web>,
    Submitted { user, form }: Submitted,
) -> Response {
    modify_submit(state, web, user, form, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> FormData {
        FormData(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_local_time_becomes_rfc3339_with_the_zones_offset() {
        let mut errors = Errors::new();
        let options = common_options(
            &form(&[
                ("when", "later"),
                ("scheduled_local", "2026-12-01T02:00"),
                ("timezone", "Africa/Nairobi"),
                ("email_notification", "on"),
            ]),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(options["scheduled_at"], "2026-12-01T02:00:00+03:00");
        assert_eq!(options["email_notification"], true);
        assert_eq!(options["dry_run"], false);
    }

    #[test]
    fn a_time_skipped_by_daylight_saving_is_a_field_error() {
        let mut errors = Errors::new();
        common_options(
            &form(&[
                ("when", "later"),
                ("scheduled_local", "2026-03-29T02:30"),
                ("timezone", "Europe/Berlin"),
            ]),
            &mut errors,
        );
        assert!(errors["scheduled_at"].contains("skip"), "{errors:?}");
    }

    #[test]
    fn later_without_a_time_and_an_unknown_zone_are_field_errors() {
        let mut errors = Errors::new();
        common_options(
            &form(&[("when", "later"), ("timezone", "Mars/Olympus")]),
            &mut errors,
        );
        assert!(errors.contains_key("scheduled_at"));
        assert!(errors.contains_key("timezone"));
    }

    #[test]
    fn pasted_lists_split_on_lines_commas_and_spaces() {
        assert_eq!(split_list("a, b\nc;d  e"), vec!["a", "b", "c", "d", "e"]);
    }
}
