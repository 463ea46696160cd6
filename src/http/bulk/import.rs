//! The import endpoint of SPEC 4.2: the CSV upload (multipart or JSON `csv_data`),
//! streamed into an encrypted blob and checked for size, UTF-8 and a usable header
//! before the operation is accepted.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{accept, fail_if, parse_common, preflight, reject_unknown};
use crate::blobs::BlobStore;
use crate::crypto::AsyncEncryptedFile;
use crate::domain::new_id;
use crate::domain::operation::{ImportMode, OnError, Parameters};
use crate::domain::patient::DateFormat;
use crate::domain::FieldError;
use crate::http::error::{AppError, AppResult};
use crate::http::extract::{perm, AuthUser, Require};
use crate::http::AppState;

/// The largest multipart option part (field_mapping is the biggest one).
const MAX_OPTION_BYTES: usize = 256 * 1024;

/// The largest JSON `csv_data` import: the JSON form is parsed in memory, so larger
/// files go as multipart, which streams.
const MAX_JSON_IMPORT_BYTES: u64 = 64 * 1024 * 1024;

/// Options of an import, from JSON or from multipart text parts.
const IMPORT_FIELDS: [&str; 6] = [
    "field_mapping",
    "mode",
    "on_error",
    "date_format",
    "csv_data",
    "file_name",
];

/// Schedules an import: multipart with a `file` part, or JSON with `csv_data`.
#[utoipa::path(post, path = "/api/v2/bulk/import/schedule", tag = "bulk", params(("Idempotency-Key" = Option<String>, Header)), request_body(content((crate::http::openapi::bodies::ImportIn = "application/json"), (Object = "multipart/form-data"))), security(("bearer" = ["bulk.import"])), responses((status = 201, description = "Scheduled"), (status = 422, description = "Invalid input"), (status = 429, description = "Too many scheduling requests"), (status = 413, description = "Too large"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
pub(super) async fn schedule_import(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::BulkImport>,
    headers: HeaderMap,
    request: Request,
) -> AppResult<Response> {
    if let Some(replay) = preflight(&state, &caller, &headers).await? {
        return Ok(replay);
    }
    let id = new_id();
    let blob = BlobStore::upload_name(id);
    let stored = receive_upload(&state, request, &headers, &blob).await;
    let result = match stored {
        Ok((body, size, got_file)) => {
            validate_import(&state, &caller, &headers, body, (&blob, size, got_file), id).await
        }
        Err(e) => Err(e),
    };
    if result.is_err() {
        state.engine.blobs.remove(&blob).await;
    }
    result
}

async fn validate_import(
    state: &AppState,
    caller: &AuthUser,
    headers: &HeaderMap,
    mut body: Map<String, Value>,
    (blob, size_bytes, got_file): (&str, u64, bool),
    id: Uuid,
) -> AppResult<Response> {
    let mut errors = Vec::new();
    // A missing file is reported with every other problem of the request (the web UI
    // shows them all at once beside their fields).
    if !got_file {
        errors.push(FieldError::new(
            "file",
            "required",
            "attach the CSV as the part `file` (or give `csv_data`)",
        ));
    }
    body.remove("csv_data");
    reject_unknown(&body, &IMPORT_FIELDS, &mut errors);
    let common = parse_common(&body, &mut errors);
    let mut enum_option = |key: &str, allowed: &str| -> Option<Value> {
        match body.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => {
                let ok = v
                    .as_str()
                    .is_some_and(|s| allowed.split(", ").any(|a| a == s));
                if !ok {
                    errors.push(FieldError::new(
                        key,
                        "invalid_enum",
                        &format!("must be one of {allowed}"),
                    ));
                }
                ok.then(|| v.clone())
            }
        }
    };
    let mode: ImportMode = enum_option("mode", "create, upsert, skip_existing")
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let on_error: OnError = enum_option("on_error", "skip, abort")
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let date_format: DateFormat = enum_option("date_format", "YYYY-MM-DD, DD/MM/YYYY, MM/DD/YYYY")
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let field_mapping: Option<BTreeMap<String, String>> = match body.get("field_mapping") {
        None | Some(Value::Null) => None,
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(m) => Some(m),
            Err(_) => {
                errors.push(FieldError::new(
                    "field_mapping",
                    "invalid_type",
                    "must be an object of CSV column: patient field",
                ));
                None
            }
        },
    };
    let file_name = body
        .get("file_name")
        .and_then(Value::as_str)
        .unwrap_or("import.csv")
        .chars()
        .take(200)
        .collect::<String>();
    // The header is checked now: a file that cannot be imported is refused at once.
    if errors.is_empty() {
        errors.extend(check_header(state, blob, field_mapping.as_ref()).await?);
    }
    fail_if(errors)?;
    let params = Parameters::Import {
        blob: blob.to_string(),
        file_name,
        field_mapping,
        mode,
        on_error,
        date_format,
        size_bytes,
    };
    accept(state, caller, headers, common, params, id).await
}

async fn check_header(
    state: &AppState,
    blob: &str,
    mapping: Option<&BTreeMap<String, String>>,
) -> AppResult<Vec<FieldError>> {
    let file = state
        .engine
        .blobs
        .open_blocking(blob)
        .await
        .map_err(|e| AppError::Internal(e.into()))?;
    let keyring = state.engine.keyring.clone();
    let aad = BlobStore::aad(blob);
    let mapping = mapping.cloned();
    tokio::task::spawn_blocking(move || -> std::io::Result<Vec<FieldError>> {
        let reader = match crate::formats::csv_import::open(keyring.decrypted_reader(file, &aad)) {
            Ok(r) => r,
            Err(e) => return Ok(vec![e.to_field_error()]),
        };
        Ok(
            crate::formats::csv_import::plan_columns(reader.header(), mapping.as_ref())
                .err()
                .unwrap_or_default(),
        )
    })
    .await
    .map_err(|e| AppError::Internal(e.into()))?
    .map_err(|e| AppError::Internal(e.into()))
}

/// Streams the CSV (multipart part `file`, or JSON `csv_data`) into an encrypted blob,
/// checking size and UTF-8 on the way; returns the other options as JSON, the size and
/// whether a file was given at all.
async fn receive_upload(
    state: &AppState,
    request: Request,
    headers: &HeaderMap,
    blob: &str,
) -> AppResult<(Map<String, Value>, u64, bool)> {
    let limit = state.config.max_upload_bytes;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let writer = state
        .engine
        .blobs
        .create(blob)
        .await
        .map_err(|e| AppError::Internal(e.into()))?;
    let mut file = AsyncEncryptedFile::wrap(&state.engine.keyring, writer, &BlobStore::aad(blob));
    let mut utf8 = Utf8Check::default();
    let mut size: u64 = 0;
    let mut options = Map::new();
    let mut got_file = false;
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = axum::extract::Multipart::from_request(request, &())
            .await
            .map_err(|e| {
                AppError::BadRequest(format!(
                    "the multipart body is malformed: {}",
                    e.body_text()
                ))
            })?;
        while let Some(mut part) = multipart.next_field().await.map_err(|e| {
            AppError::BadRequest(format!(
                "the multipart body is malformed: {}",
                e.body_text()
            ))
        })? {
            let name = part.name().unwrap_or("").to_string();
            if name == "file" {
                if got_file {
                    return Err(AppError::invalid_field(
                        "file",
                        "duplicate",
                        "send one file per import",
                    ));
                }
                got_file = true;
                if let Some(f) = part.file_name() {
                    options.insert("file_name".into(), Value::String(f.to_string()));
                }
                while let Some(bytes) = part
                    .chunk()
                    .await
                    .map_err(|e| upload_error(e.status(), e.body_text(), limit))?
                {
                    size += bytes.len() as u64;
                    if size > limit {
                        return Err(AppError::PayloadTooLarge(limit));
                    }
                    utf8.push(&bytes)?;
                    file.write(&bytes)
                        .await
                        .map_err(|e| AppError::Internal(e.into()))?;
                }
            } else {
                // Options are small; a huge text part is refused before it fills memory.
                let mut text = Vec::new();
                while let Some(bytes) = part
                    .chunk()
                    .await
                    .map_err(|e| upload_error(e.status(), e.body_text(), limit))?
                {
                    text.extend_from_slice(&bytes);
                    if text.len() > MAX_OPTION_BYTES {
                        return Err(AppError::PayloadTooLarge(MAX_OPTION_BYTES as u64));
                    }
                }
                let text = String::from_utf8(text).map_err(|_| {
                    AppError::invalid_field(&name, "not_utf8", "must be UTF-8 text")
                })?;
                options.insert(name.clone(), multipart_value(&name, &text)?);
            }
        }
    } else {
        // The JSON form is read whole, so it is capped lower than multipart uploads.
        let json_limit = usize::try_from(limit.min(MAX_JSON_IMPORT_BYTES)).unwrap_or(usize::MAX);
        let bytes = axum::body::to_bytes(Body::new(request.into_body()), json_limit)
            .await
            .map_err(|_| AppError::PayloadTooLarge(json_limit as u64))?;
        let body: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| {
            AppError::BadRequest(
                "send multipart/form-data with a `file` part, or JSON with `csv_data`".into(),
            )
        })?;
        if let Some(Value::String(csv)) = body.get("csv_data") {
            got_file = true;
            file.write(csv.as_bytes())
                .await
                .map_err(|e| AppError::Internal(e.into()))?;
        }
        options = body;
    }
    utf8.finish()?;
    let (writer, size) = file
        .finish_into()
        .await
        .map_err(|e| AppError::Internal(e.into()))?;
    writer
        .commit()
        .await
        .map_err(|e| AppError::Internal(e.into()))?;
    Ok((options, size, got_file))
}

fn upload_error(status: StatusCode, text: String, limit: u64) -> AppError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::PayloadTooLarge(limit)
    } else {
        AppError::BadRequest(format!("the upload failed: {text}"))
    }
}

/// Multipart options are text: booleans, and JSON for objects and lists (SPEC 10).
fn multipart_value(name: &str, text: &str) -> AppResult<Value> {
    let text = text.trim();
    Ok(match name {
        "dry_run" | "email_notification" => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => {
                return Err(AppError::invalid_field(
                    name,
                    "invalid_type",
                    "must be true or false",
                ))
            }
        },
        "field_mapping" => serde_json::from_str(text)
            .map_err(|_| AppError::invalid_field(name, "invalid_type", "must be a JSON object"))?,
        "depends_on" if text.starts_with('[') => serde_json::from_str(text).map_err(|_| {
            AppError::invalid_field(
                name,
                "invalid_type",
                "must be a JSON list or comma-separated ids",
            )
        })?,
        "depends_on" => Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        _ => Value::String(text.to_string()),
    })
}

/// Checks that a byte stream is UTF-8, chunk by chunk (a character may straddle chunks).
#[derive(Default)]
struct Utf8Check {
    carry: Vec<u8>,
    lines: u64,
}

impl Utf8Check {
    fn push(&mut self, bytes: &[u8]) -> AppResult<()> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(bytes);
        match std::str::from_utf8(&buf) {
            Ok(_) => {}
            Err(e) if e.error_len().is_none() => self.carry = buf[e.valid_up_to()..].to_vec(),
            Err(e) => {
                let line = self.lines
                    + 1
                    + buf[..e.valid_up_to()]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count() as u64;
                return Err(AppError::invalid_field(
                    "file",
                    "not_utf8",
                    &format!("the file is not UTF-8 text (line {line}); save it as \"CSV UTF-8\""),
                ));
            }
        }
        self.lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
        Ok(())
    }

    fn finish(&self) -> AppResult<()> {
        if self.carry.is_empty() {
            Ok(())
        } else {
            Err(AppError::invalid_field(
                "file",
                "not_utf8",
                "the file is not UTF-8 text (it ends inside a character)",
            ))
        }
    }
}
