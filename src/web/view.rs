//! How operations, times and results are shown: plain values for the templates, and
//! which buttons a user gets on an operation (the API's own rules, read from the role).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::config::Config;
use crate::domain::operation::{Operation, OperationType, Status};
use crate::domain::permission::{Permission, Role};

use super::session::WebUser;

pub fn role_label(role: Role) -> &'static str {
    match role {
        Role::Admin => "Administrator",
        Role::DataManager => "Data manager",
        Role::Analyst => "Analyst",
        Role::Viewer => "Viewer",
    }
}

pub fn type_label(t: OperationType) -> &'static str {
    match t {
        OperationType::Import => "Import",
        OperationType::Export => "Export",
        OperationType::Update => "Update",
        OperationType::Delete => "Delete",
        OperationType::Rollback => "Rollback",
    }
}

pub fn status_label(op: &Operation) -> &'static str {
    if op.undoing() {
        return "Undoing";
    }
    if op.cancel_requested && !op.status.is_final() {
        return "Cancelling";
    }
    match op.status {
        Status::Scheduled => "Scheduled",
        Status::Processing => "Running",
        Status::Completed => "Completed",
        Status::Failed => "Failed",
        Status::Cancelled => "Cancelled",
        Status::RolledBack => "Rolled back",
    }
}

/// Which dashboard section an operation belongs to.
pub fn section(op: &Operation) -> &'static str {
    match op.status {
        Status::Scheduled => "scheduled",
        Status::Processing => "running",
        _ => "finished",
    }
}

/// A time as the templates show it: the RFC 3339 value (for `<time datetime>`, which
/// the script reformats in the browser's zone) and the text in the user's zone.
pub fn time(t: &DateTime<Utc>, tz: chrono_tz::Tz) -> Value {
    json!({
        "iso": crate::domain::rfc3339(t),
        "text": t.with_timezone(&tz).format("%-d %b %Y, %H:%M %Z").to_string(),
    })
}

fn opt_time(t: &Option<DateTime<Utc>>, tz: chrono_tz::Tz) -> Value {
    t.as_ref().map(|t| time(t, tz)).unwrap_or(Value::Null)
}

/// "3 h 20 min", "45 min", "2 d 4 h": a remaining duration, coarse.
pub fn remaining(d: chrono::Duration) -> String {
    let minutes = d.num_minutes().max(0);
    let (days, hours, mins) = (minutes / 1440, (minutes % 1440) / 60, minutes % 60);
    if days > 0 {
        format!("{days} d {hours} h")
    } else if hours > 0 {
        format!("{hours} h {mins} min")
    } else {
        format!("{} min", mins.max(1))
    }
}

fn number(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or(0)
}

/// One line about the result, counts only (no patient data exists in a result).
pub fn result_summary(op: &Operation) -> Option<String> {
    let r = op
        .result
        .as_ref()
        .filter(|r| r.as_object().is_some_and(|o| !o.is_empty()))?;
    let dry = if op.dry_run {
        " (dry run: nothing was written)"
    } else {
        ""
    };
    Some(match op.op_type {
        OperationType::Import => format!(
            "{} rows: {} imported, {} updated, {} skipped, {} failed{dry}",
            number(r, "rows_total"),
            number(r, "rows_imported"),
            number(r, "rows_updated"),
            number(r, "rows_skipped"),
            number(r, "rows_failed"),
        ),
        OperationType::Export => format!(
            "{} patients exported as {} ({} bytes){dry}",
            number(r, "rows_exported"),
            r.get("format").and_then(Value::as_str).unwrap_or("file"),
            number(r, "bytes"),
        ),
        OperationType::Update => format!(
            "{} patients matched, {} updated{dry}",
            number(r, "patients_matched"),
            number(r, "patients_updated"),
        ),
        OperationType::Delete => format!("{} patients deleted{dry}", number(r, "patients_deleted")),
        OperationType::Rollback => format!(
            "{} patients restored, {} removed, {} left alone (changed since)",
            number(r, "patients_restored"),
            number(r, "patients_removed"),
            r.get("conflicts_total")
                .and_then(Value::as_i64)
                .or_else(|| r
                    .get("conflicts")
                    .and_then(Value::as_array)
                    .map(|a| a.len() as i64))
                .unwrap_or(0),
        ),
    })
}

/// "45 % (4500 of 10000)", "1200 rows so far", or "starting…" for a running operation.
pub fn progress_text(op: &Operation) -> String {
    match op.progress_total {
        Some(total) if total > 0 => {
            let percent = (op.progress_processed as f64 * 100.0 / total as f64).min(100.0);
            format!("{percent:.0} % ({} of {total})", op.progress_processed)
        }
        _ if op.progress_processed > 0 => format!("{} so far", op.progress_processed),
        _ => "starting…".to_string(),
    }
}

/// The rollback window still open for a completed operation, if any.
fn rollback_left(op: &Operation, config: &Config) -> Option<chrono::Duration> {
    if op.status != Status::Completed || op.dry_run {
        return None;
    }
    let window = match op.op_type {
        OperationType::Import => config.import_rollback_window,
        OperationType::Update | OperationType::Delete => config.backup_retention,
        _ => return None,
    };
    let window = chrono::Duration::from_std(window).ok()?;
    let end = op.completed_at.unwrap_or(op.created_at) + window;
    let left = end - crate::domain::now();
    (left > chrono::Duration::zero()).then_some(left)
}

/// An operation as a dashboard row or operation page shows it, with the buttons this
/// user may use.
pub fn operation(
    op: &Operation,
    user: &WebUser,
    config: &Config,
    emails: &HashMap<Uuid, String>,
) -> Value {
    let api = op.to_json();
    let own = op.user_id == user.caller.user.id;
    let who = if own {
        "you".to_string()
    } else {
        emails
            .get(&op.user_id)
            .cloned()
            .unwrap_or_else(|| "another user".into())
    };
    // The API refuses to cancel what has ended, what is undoing and a started rollback.
    let cancellable = !(op.status.is_final()
        || op.undoing()
        || (op.op_type == OperationType::Rollback && op.attempt > 0));
    let can_cancel = cancellable && (own || user.has(Permission::BulkCancel));
    let rollback_left = if user.has(Permission::BulkRollback) {
        rollback_left(op, config)
    } else {
        None
    };
    let expires = op
        .result
        .as_ref()
        .and_then(|r| r.get("expires_at"))
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let can_download = op.op_type == OperationType::Export
        && op.status == Status::Completed
        && !op.dry_run
        && user.has(Permission::BulkExport)
        && expires.is_some_and(|t| t > crate::domain::now());
    let rows_failed = op
        .result
        .as_ref()
        .map(|r| number(r, "rows_failed"))
        .unwrap_or(0);
    let has_errors =
        op.op_type == OperationType::Import && (rows_failed > 0 || op.status == Status::Failed);
    json!({
        "id": op.id,
        "short_id": op.id.to_string().chars().skip(24).collect::<String>(),
        "type": op.op_type.as_str(),
        "type_label": type_label(op.op_type),
        "status": op.status.as_str(),
        "status_label": status_label(op),
        "section": section(op),
        "who": who,
        "own": own,
        "dry_run": op.dry_run,
        "email_notification": op.email_notification,
        "timezone": op.timezone,
        "created_at": time(&op.created_at, user.tz),
        "scheduled_at": time(&op.scheduled_at, user.tz),
        "started_at": opt_time(&op.started_at, user.tz),
        "completed_at": opt_time(&op.completed_at, user.tz),
        "progress": api["progress"],
        "progress_text": progress_text(op),
        "result_summary": result_summary(op),
        "error_message": op.error_message,
        "target_operation_id": op.target_operation_id,
        "depends_on": op.depends_on,
        "can_cancel": can_cancel,
        "can_rollback": rollback_left.is_some(),
        "rollback_left": rollback_left.map(remaining),
        "can_download": can_download,
        "download_expires": expires.map(|t| time(&t, user.tz)),
        "has_errors": has_errors,
        "rows_failed": rows_failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_time_is_coarse_and_readable() {
        assert_eq!(
            remaining(chrono::Duration::minutes(23 * 60 + 59)),
            "23 h 59 min"
        );
        assert_eq!(remaining(chrono::Duration::minutes(45)), "45 min");
        assert_eq!(remaining(chrono::Duration::seconds(20)), "1 min");
        assert_eq!(remaining(chrono::Duration::days(29)), "29 d 0 h");
    }
}
