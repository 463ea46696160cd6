//! The storage side of the bulk engine: the job queue in `bulk_operations`, chunk
//! commits fenced by lease and attempt, row errors and before-images.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{NewAuditEntry, Page, StoreResult};
use crate::domain::filters::PatientFilters;
use crate::domain::operation::{Operation, OperationType, Status};
use crate::domain::patient::{Patient, PatientFields};

/// One problem with one row of an import (no cell values: they are patient data).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RowError {
    pub row: i64,
    pub column: String,
    pub code: String,
    pub message: String,
}

/// The full new state of an existing patient, written only if its version is still
/// `expected_version`; `backup` is the sealed before-image kept for rollback.
#[derive(Debug, Clone)]
pub struct PatientWrite {
    pub patient_id: Uuid,
    pub expected_version: i64,
    pub fields: PatientFields,
    pub deleted_at: Option<DateTime<Utc>>,
    pub backup: Option<Vec<u8>>,
}

/// What one chunk of a running operation commits, all in one transaction with its
/// progress, so that a resumed operation neither repeats nor skips work.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    pub processed: i64,
    pub total: Option<i64>,
    pub cursor: String,
    pub inserts: Vec<Patient>,
    pub writes: Vec<PatientWrite>,
    /// Patients to remove outright (rows an import created, on undo).
    pub removals: Vec<Uuid>,
    /// When set, a removal happens only if the patient still has this version; if any
    /// does not, the chunk commits nothing and reports a conflict.
    pub removal_version: Option<i64>,
    pub row_errors: Vec<RowError>,
    /// Patients an undo leaves alone (stored as rows, never in the cursor).
    pub conflicts: Vec<Conflict>,
    /// Marks the operation as undoing its own changes (first chunk of an undo).
    pub undo: Option<UndoMark>,
    /// The columns `writes` change; `None`: every writable column and `deleted_at`.
    pub written: Option<WrittenColumns>,
}

/// The columns a chunk's writes change. Only these are in the `UPDATE`: the statement
/// is shorter, and SQLite leaves alone every index on a column it does not set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrittenColumns {
    /// Writable fields, in the order of `WRITABLE_FIELDS`.
    pub fields: Vec<&'static str>,
    pub deleted_at: bool,
}

impl WrittenColumns {
    pub fn all() -> Self {
        WrittenColumns {
            fields: crate::domain::patient::WRITABLE_FIELDS.to_vec(),
            deleted_at: true,
        }
    }
}

/// A patient left as it is by an undo because someone changed it after the operation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Conflict {
    pub patient_id: Uuid,
    pub reason: String,
}

/// Why an operation undoes its own partial changes, and the message it ends with.
#[derive(Debug, Clone, PartialEq)]
pub struct UndoMark {
    /// `cancelled`, `aborted` or `failed`.
    pub reason: String,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChunkOutcome {
    Committed {
        cancel_requested: bool,
    },
    /// Another worker holds the operation now; this one must stop without writing.
    LeaseLost,
    /// A patient's version moved on between reading and writing; nothing was written.
    Conflict(Uuid),
}

/// How an attempt ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// A final status: completed, failed or cancelled.
    Final(Status),
    /// Back to `scheduled`, due again at `at`; the attempt counts as a failure.
    Retry { at: DateTime<Utc> },
    /// The undo of the operation's own changes stopped on an error: it stays
    /// `processing` (undoing) and any worker resumes it at `at`. Never counts.
    RetryUndo { at: DateTime<Utc>, undo: UndoMark },
    /// The process is stopping: the lease is given up so that another process takes
    /// the operation over at once. Not a failure.
    Release,
}

/// The end of an attempt, fenced by `attempt`, with its audit entries.
#[derive(Debug, Clone)]
pub struct Finish {
    pub operation_id: Uuid,
    pub attempt: i64,
    pub ending: Ending,
    pub result: Option<serde_json::Value>,
    pub error_message: Option<String>,
    pub output_blob: Option<String>,
    pub output_expires_at: Option<DateTime<Utc>>,
    pub completed_at: DateTime<Utc>,
    pub audit: Option<NewAuditEntry>,
    /// A completing rollback marks its target `rolled_back` in the same transaction,
    /// with this audit entry in the target's trail.
    pub rolled_back: Option<(Uuid, NewAuditEntry)>,
}

/// What `finish_operation` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Done,
    /// Another attempt holds the operation: nothing was written.
    LeaseLost,
    /// A completion met a cancel that arrived after the last chunk: nothing was
    /// written; the attempt must undo and end `cancelled` instead.
    CancelRequested,
}

/// What one claim handed out.
#[derive(Debug, Default)]
pub struct Claimed {
    pub operations: Vec<Operation>,
    /// Some due work was skipped because another process held it at that moment
    /// (worth trying again soon, not after a full poll interval).
    pub contended: bool,
}

/// A sealed before-image as stored.
#[derive(Debug, Clone)]
pub struct Backup {
    pub patient_id: Uuid,
    pub version_after: i64,
    pub before_image: Vec<u8>,
}

/// Which patients to page through, and how.
#[derive(Debug, Clone)]
pub struct PatientScan<'a> {
    pub org: Uuid,
    pub filters: &'a PatientFilters,
    pub include_deleted: bool,
    /// Only patients created by this import.
    pub imported_by: Option<Uuid>,
    pub page: Page,
}

#[async_trait]
pub trait OpsStore: Send + Sync {
    /// Inserts a scheduled operation, its dependencies and its audit entry together.
    async fn insert_operation(&self, op: &Operation, audit: NewAuditEntry) -> StoreResult<()>;
    async fn find_by_idempotency_key(
        &self,
        user: Uuid,
        key: &str,
    ) -> StoreResult<Option<Operation>>;
    /// Frees an expired idempotency key for reuse.
    async fn clear_idempotency_key(&self, operation_id: Uuid) -> StoreResult<()>;
    async fn get_operation(&self, org: Uuid, id: Uuid) -> StoreResult<Option<Operation>>;
    /// Newest first; `status`/`type` narrow it.
    async fn list_operations(
        &self,
        org: Uuid,
        status: Option<Status>,
        op_type: Option<OperationType>,
        page: &Page,
    ) -> StoreResult<Vec<Operation>>;
    /// The organization's scheduled operations by `scheduled_at`.
    async fn list_scheduled(&self, org: Uuid) -> StoreResult<Vec<Operation>>;
    async fn count_scheduled(&self, org: Uuid) -> StoreResult<i64>;
    /// Operations a user created since `since`, with the oldest one's time (rate limit).
    async fn created_by_user_since(
        &self,
        user: Uuid,
        since: DateTime<Utc>,
    ) -> StoreResult<(i64, Option<DateTime<Utc>>)>;
    /// Cancels a scheduled operation at once, or flags a running one, in one statement
    /// each (no read-then-write). Returns the operation as it is afterwards and whether
    /// the cancel was accepted: refused when it had ended, when it is a rollback that
    /// has started, or when it is already undoing its changes.
    async fn request_cancel(
        &self,
        org: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
        audit: NewAuditEntry,
    ) -> StoreResult<Option<(Operation, bool)>>;
    /// Claims up to `want` due operations for `worker`, serving organizations fairly and
    /// keeping at most `max_per_org` running per organization across processes. The
    /// lease runs `lease` from the database's clock at the claim; each claimed
    /// operation's `operation.start` audit entry is written in the same transaction.
    /// Never waits on a row another worker holds.
    async fn claim_due(
        &self,
        worker: &str,
        lease: std::time::Duration,
        max_per_org: i64,
        want: usize,
    ) -> StoreResult<Claimed>;
    /// For monitoring: operations by type and status, and how many scheduled ones are
    /// due at `now` and how many wait for a later time.
    async fn queue_counts(
        &self,
        now: DateTime<Utc>,
    ) -> StoreResult<(Vec<(String, String, i64)>, i64, i64)>;
    /// For the statistics of an organization: (type, status, started_at, completed_at,
    /// rows processed) of its operations created since `since`, at most `limit`.
    #[allow(clippy::type_complexity)]
    async fn operation_stats_rows(
        &self,
        org: Uuid,
        since: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<
        Vec<(
            String,
            String,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            i64,
        )>,
    >;
    /// The earliest time something becomes due (scheduled, retry or expired lease).
    async fn next_due_at(&self) -> StoreResult<Option<DateTime<Utc>>>;
    /// Cancels scheduled operations whose dependency failed, was cancelled or rolled
    /// back, transitively, each with its audit entry; returns how many. The finish of
    /// an operation does this itself; this is the periodic safety net.
    async fn cancel_orphaned_dependents(&self, now: DateTime<Utc>) -> StoreResult<u64>;
    /// Extends the lease; false when this attempt no longer holds the operation.
    /// The lease runs `lease` from the database's clock.
    async fn heartbeat(
        &self,
        id: Uuid,
        attempt: i64,
        lease: std::time::Duration,
    ) -> StoreResult<bool>;
    /// Commits one chunk with its progress, fenced by `attempt`.
    async fn commit_chunk(&self, op: &Operation, chunk: Chunk) -> StoreResult<ChunkOutcome>;
    /// Ends an attempt (fenced), with its audit entries and the cancellation of
    /// dependants its ending orphans, in one transaction.
    async fn finish_operation(&self, finish: Finish) -> StoreResult<Finished>;
    /// A page of the patients an operation's undo left alone, by patient id.
    async fn conflicts(
        &self,
        org: Uuid,
        operation_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<Conflict>>;
    async fn count_conflicts(&self, org: Uuid, operation_id: Uuid) -> StoreResult<i64>;
    /// Whether the operation was asked to cancel.
    async fn cancel_requested(&self, id: Uuid) -> StoreResult<bool>;

    async fn row_errors(&self, operation_id: Uuid, limit: i64) -> StoreResult<Vec<RowError>>;
    async fn output_blob(
        &self,
        org: Uuid,
        id: Uuid,
    ) -> StoreResult<Option<(String, DateTime<Utc>)>>;
    /// Live patients of the organization with one of these UNHCR numbers.
    async fn patients_by_unhcr(&self, org: Uuid, numbers: &[String]) -> StoreResult<Vec<Patient>>;
    /// A page of patients (by id) matching a scan.
    async fn scan_patients(&self, scan: PatientScan<'_>) -> StoreResult<Vec<Patient>>;
    async fn count_patients(&self, scan: PatientScan<'_>) -> StoreResult<i64>;
    /// The live (or all, with `include_deleted`) patients of an organization matching
    /// `filters`, by id, read by one query and handed over in batches of `batch`
    /// through the returned channel (which holds at most two batches: memory does not
    /// grow with the result). Only `columns` are decoded, besides `id`: other fields
    /// keep their empty defaults. A name that is not a patient column is ignored.
    /// Dropping the receiver ends the query.
    fn stream_patients(
        &self,
        org: Uuid,
        filters: PatientFilters,
        include_deleted: bool,
        columns: &[String],
        batch: usize,
    ) -> tokio::sync::mpsc::Receiver<StoreResult<Vec<Patient>>>;
    /// Patients by id, whatever their deletion state, within the organization.
    async fn patients_by_id(&self, org: Uuid, ids: &[Uuid]) -> StoreResult<Vec<Patient>>;
    /// A page of an operation's before-images, by patient id.
    async fn backups(
        &self,
        operation_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<Backup>>;
    async fn count_backups(&self, operation_id: Uuid) -> StoreResult<i64>;
    /// Calls `on_change` whenever another process changes the queue, until the
    /// connection fails (PostgreSQL LISTEN); returns at once where there is no such
    /// channel (SQLite).
    async fn watch_queue(&self, on_change: &(dyn Fn() + Send + Sync)) -> StoreResult<()>;
    /// Deletes before-images written before `before` (backup retention).
    async fn purge_backups(&self, before: DateTime<Utc>) -> StoreResult<u64>;
    /// Export files whose download window ended: (operation id, blob name).
    async fn expired_exports(&self, now: DateTime<Utc>) -> StoreResult<Vec<(Uuid, String)>>;
    /// Forgets an operation's export file once it has been removed.
    async fn clear_output(&self, operation_id: Uuid) -> StoreResult<()>;
    /// The status of any operation (internal: the cleanup's check of upload files).
    async fn operation_status(&self, id: Uuid) -> StoreResult<Option<Status>>;
    /// Removes finished operations completed before `before`, with their row errors,
    /// backups and dependencies (audit entries stay).
    async fn purge_finished_operations(&self, before: DateTime<Utc>) -> StoreResult<u64>;
    /// Removes patients soft-deleted before `before` for good.
    async fn purge_deleted_patients(&self, before: DateTime<Utc>) -> StoreResult<u64>;
    /// Brings the planner's statistics up to date while a bulk operation grows or
    /// changes the patients table; plans made on the statistics of a far smaller
    /// table scan whole organizations per chunk.
    async fn refresh_statistics(&self) -> StoreResult<()>;
    /// Writes an audit entry about an operation (start, completion, download...).
    async fn audit_operation(&self, entry: NewAuditEntry) -> StoreResult<()>;
}
