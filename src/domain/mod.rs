//! Plain types and rules of the product: no I/O here.

pub mod codes;
pub mod filters;
pub mod operation;
pub mod patient;
pub mod permission;
pub mod schedule;

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde::Serialize;

/// One problem with one input field, as the API reports it in `details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    /// A stable machine-readable rule name (`required`, `invalid_enum`, ...).
    pub code: String,
    pub message: String,
}

/// The longest field name an error repeats back: the name may come from the request
/// (an unknown option, a CSV header), and a 50 MB name must not become a 50 MB answer.
const MAX_ECHOED_FIELD_CHARS: usize = 200;

impl FieldError {
    pub fn new(field: &str, code: &str, message: &str) -> Self {
        let field = if field.chars().count() > MAX_ECHOED_FIELD_CHARS {
            let mut short: String = field.chars().take(MAX_ECHOED_FIELD_CHARS).collect();
            short.push('…');
            short
        } else {
            field.to_string()
        };
        FieldError {
            field,
            code: code.to_string(),
            message: message.to_string(),
        }
    }
}

/// Now, truncated to microseconds: both databases keep exactly this precision, so a
/// value read back equals the value written (the audit hash chain depends on it).
pub fn now() -> DateTime<Utc> {
    truncate_micros(Utc::now())
}

/// Drops sub-microsecond precision.
pub fn truncate_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = t.nanosecond() / 1_000 * 1_000;
    t.with_nanosecond(nanos).unwrap_or(t)
}

/// RFC 3339 in UTC with microseconds, the one way times are written by Haven.
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A new time-ordered id (UUID v7).
pub fn new_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}
