//! Bulk operations (SPEC 4): their kinds, statuses and the parameters each kind runs with.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::filters::PatientFilters;
use super::patient::DateFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationType {
    Import,
    Export,
    Update,
    Delete,
    Rollback,
}

impl OperationType {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationType::Import => "import",
            OperationType::Export => "export",
            OperationType::Update => "update",
            OperationType::Delete => "delete",
            OperationType::Rollback => "rollback",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(Value::String(text.to_string())).ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Scheduled,
    Processing,
    Completed,
    Failed,
    Cancelled,
    RolledBack,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Processing => "processing",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::RolledBack => "rolled_back",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(Value::String(text.to_string())).ok()
    }

    /// Whether the operation has ended (nothing more will run).
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Scheduled | Status::Processing)
    }
}

/// An operation as stored, parameters still sealed.
#[derive(Debug, Clone)]
pub struct Operation {
    pub id: Uuid,
    pub op_type: OperationType,
    pub status: Status,
    pub user_id: Uuid,
    pub organization_id: Uuid,
    pub scheduled_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub parameters: Vec<u8>,
    pub parameters_key_id: String,
    pub result: Option<Value>,
    pub error_message: Option<String>,
    pub timezone: String,
    pub email_notification: bool,
    pub dry_run: bool,
    pub schedule_id: Option<Uuid>,
    pub target_operation_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
    pub attempt: i64,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    pub progress_processed: i64,
    pub progress_total: Option<i64>,
    pub progress_cursor: Option<String>,
    /// Attempts that failed (the budget of `--max-attempts`); takeovers after a
    /// graceful release or after progress do not count.
    pub failures: i64,
    /// Set while the operation undoes its own partial changes: `cancelled`,
    /// `aborted` or `failed`, with the message it will end with.
    pub undo_reason: Option<String>,
    pub undo_message: Option<String>,
    pub depends_on: Vec<Uuid>,
}

/// What a new operation is made of; the rest starts empty (see `Operation::scheduled`).
#[derive(Debug, Clone)]
pub struct NewOperation {
    pub id: Uuid,
    pub op_type: OperationType,
    pub user_id: Uuid,
    pub organization_id: Uuid,
    pub scheduled_at: DateTime<Utc>,
    /// Sealed with the master key (`engine::parameters_aad(id)`).
    pub parameters: Vec<u8>,
    pub parameters_key_id: String,
    pub timezone: String,
    pub email_notification: bool,
    pub dry_run: bool,
    pub schedule_id: Option<Uuid>,
    pub target_operation_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
    pub depends_on: Vec<Uuid>,
}

impl Operation {
    /// A new operation, `scheduled`, created at `created_at`.
    pub fn scheduled(new: NewOperation, created_at: DateTime<Utc>) -> Operation {
        Operation {
            id: new.id,
            op_type: new.op_type,
            status: Status::Scheduled,
            user_id: new.user_id,
            organization_id: new.organization_id,
            scheduled_at: new.scheduled_at,
            started_at: None,
            completed_at: None,
            created_at,
            parameters: new.parameters,
            parameters_key_id: new.parameters_key_id,
            result: None,
            error_message: None,
            timezone: new.timezone,
            email_notification: new.email_notification,
            dry_run: new.dry_run,
            schedule_id: new.schedule_id,
            target_operation_id: new.target_operation_id,
            idempotency_key: new.idempotency_key,
            attempt: 0,
            lease_expires_at: None,
            next_attempt_at: None,
            cancel_requested: false,
            progress_processed: 0,
            progress_total: None,
            progress_cursor: None,
            failures: 0,
            undo_reason: None,
            undo_message: None,
            depends_on: new.depends_on,
        }
    }

    /// Whether the operation is undoing its own partial changes right now (it stays
    /// `processing` meanwhile; SPEC 4.1 has no status of its own for it).
    pub fn undoing(&self) -> bool {
        self.undo_reason.is_some() && !self.status.is_final()
    }

    /// The operation as the API shows it (SPEC 4.4). Holds no patient data.
    pub fn to_json(&self) -> Value {
        let ts = |t: &Option<DateTime<Utc>>| t.as_ref().map(super::rfc3339);
        let percent = match (self.status, self.progress_total) {
            (Status::Completed, _) => 100.0,
            (_, Some(total)) if total > 0 => {
                let share = self.progress_processed as f64 / total as f64;
                ((share * 1000.0).round() / 10.0).min(100.0)
            }
            _ => 0.0,
        };
        serde_json::json!({
            "id": self.id,
            "operation_id": self.id,
            "type": self.op_type.as_str(),
            "status": self.status.as_str(),
            "user_id": self.user_id,
            "organization_id": self.organization_id,
            "created_at": super::rfc3339(&self.created_at),
            "scheduled_at": super::rfc3339(&self.scheduled_at),
            "started_at": ts(&self.started_at),
            "completed_at": ts(&self.completed_at),
            "timezone": self.timezone,
            "email_notification": self.email_notification,
            "depends_on": self.depends_on,
            "schedule_id": self.schedule_id,
            "dry_run": self.dry_run,
            "cancel_requested": self.cancel_requested,
            "undoing": self.undoing(),
            "attempt": self.attempt,
            "failures": self.failures,
            "progress": {
                "processed": self.progress_processed,
                "total": self.progress_total,
                "percent": percent,
                "phase": if self.undoing() { "undoing" } else if self.status == Status::Processing { "running" } else { self.status.as_str() },
            },
            "result": self.result.clone().unwrap_or(Value::Object(Map::new())),
            "error_message": self.error_message,
        })
    }
}

/// How an import treats a row whose UNHCR number exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportMode {
    #[default]
    Create,
    Upsert,
    SkipExisting,
}

/// What an import does with invalid rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Skip,
    Abort,
}

/// Which patients an update or delete applies to: exactly one of the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    PatientIds(Vec<Uuid>),
    Filters(PatientFilters),
}

impl Targets {
    /// The targets as filters (ids become an id filter).
    pub fn as_filters(&self) -> PatientFilters {
        match self {
            Targets::PatientIds(ids) => PatientFilters {
                patient_ids: Some(ids.clone()),
                ..Default::default()
            },
            Targets::Filters(f) => f.clone(),
        }
    }
}

impl Parameters {
    /// The kind of operation these parameters run.
    pub fn operation_type(&self) -> OperationType {
        match self {
            Parameters::Import { .. } => OperationType::Import,
            Parameters::Export { .. } => OperationType::Export,
            Parameters::Update { .. } => OperationType::Update,
            Parameters::Delete { .. } => OperationType::Delete,
            Parameters::Rollback { .. } => OperationType::Rollback,
        }
    }
}

/// Everything an operation needs to run; stored sealed in `parameters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Parameters {
    Import {
        /// Name of the encrypted upload in the blob store.
        blob: String,
        file_name: String,
        field_mapping: Option<BTreeMap<String, String>>,
        mode: ImportMode,
        on_error: OnError,
        date_format: DateFormat,
        /// Plaintext size of the upload, to estimate the rows while it is read.
        #[serde(default)]
        size_bytes: u64,
    },
    Export {
        format: crate::formats::export::ExportFormat,
        fields: Vec<String>,
        filters: PatientFilters,
        include_deleted: bool,
    },
    Update {
        targets: Targets,
        /// Validated changes: field → new value (`null` clears).
        changes: Map<String, Value>,
        create_backup: bool,
    },
    Delete {
        targets: Targets,
    },
    Rollback {
        target_operation_id: Uuid,
        force: bool,
    },
}
