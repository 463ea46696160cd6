//! The bulk engine (SPEC 4.5): claims due operations from the database with a lease,
//! runs them chunk by chunk, and records how they ended.
//!
//! Everything that must survive a crash is in the database: the claim (`attempt`,
//! lease), the progress cursor (committed with each chunk), the before-images. A worker
//! holds nothing that another worker could not rebuild after taking over.

pub mod before_image;
mod cleanup;
mod export;
mod import;
mod modify;
pub mod recurring;
pub mod undo;

pub use cleanup::CleanupReport;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::blobs::BlobStore;
use crate::crypto::Keyring;
use crate::domain::now;
use crate::domain::operation::{Operation, OperationType, Parameters, Status};
use crate::store::ops::{Chunk, ChunkOutcome, Ending, Finish, Finished, UndoMark};
use crate::store::{NewAuditEntry, Store, StoreError};

/// Engine limits and retention, from the command line.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub workers: usize,
    pub max_per_org: i64,
    pub lease: Duration,
    pub max_attempts: i64,
    pub export_retention: Duration,
    pub import_rollback_window: Duration,
    pub backup_retention: Duration,
    pub shutdown_timeout: Duration,
    pub cleanup_interval: Duration,
    /// Uploads younger than this are left alone by the cleanup even when no operation
    /// needs them: their upload may still be under way (one hour; tests shorten it).
    pub upload_grace: Duration,
}

impl EngineSettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        EngineSettings {
            workers: config.worker_count(),
            max_per_org: config.max_per_org,
            lease: config.lease_duration,
            max_attempts: config.max_attempts,
            export_retention: config.export_retention,
            import_rollback_window: config.import_rollback_window,
            backup_retention: config.backup_retention,
            shutdown_timeout: config.shutdown_timeout,
            cleanup_interval: config.cleanup_interval,
            upload_grace: Duration::from_secs(3600),
        }
    }
}

/// Whether `run_once` found work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ran {
    Operation(Uuid),
    Empty,
}

/// The engine of one process. Cheap to share behind an `Arc`.
pub struct Engine {
    pub store: Arc<dyn Store>,
    pub keyring: Keyring,
    pub blobs: BlobStore,
    pub settings: EngineSettings,
    wake: Arc<Notify>,
    worker_id: String,
    /// Set when the process stops: running attempts release their operations at the
    /// next chunk so that another process takes over at once.
    stopping: AtomicBool,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Why a run stopped early.
#[derive(Debug)]
pub enum RunError {
    /// Another worker took the operation over; this one writes nothing more.
    LeaseLost,
    /// The process is stopping; the operation was left at a committed chunk for
    /// another process to continue.
    Released,
    /// Worth retrying later (database unreachable, disk full...).
    Transient(anyhow::Error),
    /// Will not get better by retrying; the message is shown to the user.
    Failed {
        message: String,
        result: Option<Value>,
    },
}

impl From<StoreError> for RunError {
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::Database(e) if is_transient(e) => RunError::Transient(err.into()),
            StoreError::Duplicate(field) => RunError::Failed {
                message: format!(
                    "the change would give two patients of the organization the same {field}"
                ),
                result: None,
            },
            StoreError::Corrupt(_) => RunError::Failed {
                message: "stored data could not be read".into(),
                result: None,
            },
            // Any other database error is a bug or bad data, not an outage: retrying
            // would only repeat it. Details go to the log, not to the user.
            StoreError::Database(e) => {
                tracing::error!(error = %e, "database error in a running operation");
                RunError::Failed {
                    message: "a database error stopped the operation; see the server log".into(),
                    result: None,
                }
            }
            StoreError::NotFound | StoreError::VersionConflict | StoreError::Migrate(_) => {
                RunError::Transient(err.into())
            }
        }
    }
}

impl From<std::io::Error> for RunError {
    fn from(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::InvalidData {
            RunError::Failed {
                message: "a stored file is damaged or was encrypted with another key".into(),
                result: None,
            }
        } else {
            RunError::Transient(err.into())
        }
    }
}

/// Whether a database error is an outage worth retrying: lost connections, a server
/// shutting down or restarting, resources exhausted, lock contention.
fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if code.len() == 5 {
                // PostgreSQL SQLSTATE: connection exception, insufficient resources
                // (disk full), operator intervention (shutdown), serialization, deadlock.
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
                    || code == "40001"
                    || code == "40P01"
            } else {
                // SQLite primary result codes: BUSY, LOCKED, IOERR, FULL.
                let primary = code.parse::<i32>().unwrap_or(0) & 0xff;
                matches!(primary, 5 | 6 | 10 | 13)
            }
        }
        _ => false,
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a run ended when it did not stop early.
#[derive(Debug)]
pub enum Outcome {
    Completed {
        result: Value,
        output: Option<(String, DateTime<Utc>)>,
        /// A rollback names its target, marked `rolled_back` in the same transaction
        /// as this completion, with these audit details.
        rolled_back: Option<(Uuid, Value)>,
    },
    Cancelled {
        result: Value,
        /// What the user should know beyond "its partial changes were undone".
        note: Option<String>,
    },
    Failed {
        result: Value,
        message: String,
    },
}

/// One attempt at one operation: the claim it runs under and helpers for its chunks.
pub struct Run<'a> {
    pub engine: &'a Engine,
    pub op: Operation,
    lease_lost: Arc<AtomicBool>,
    /// Milliseconds since the Unix epoch of the last committed chunk, read by the
    /// heartbeat: an attempt that stops making progress stops renewing its lease.
    last_progress: Arc<std::sync::atomic::AtomicI64>,
    /// Set once this attempt undoes its own changes: an error from then on retries the
    /// undo instead of ending the operation half-undone.
    undoing: std::sync::Mutex<Option<UndoMark>>,
}

impl Run<'_> {
    /// Commits a chunk under the lease; `Ok(true)` when a cancel was requested.
    pub async fn commit(&self, chunk: Chunk) -> Result<bool, RunError> {
        match self.try_commit(chunk).await? {
            ChunkOutcome::Committed { cancel_requested } => Ok(cancel_requested),
            ChunkOutcome::LeaseLost => Err(RunError::LeaseLost),
            ChunkOutcome::Conflict(_) => Err(RunError::Transient(anyhow::anyhow!(
                "a patient changed while the chunk was prepared"
            ))),
        }
    }

    /// Like `commit`, but reports a version conflict instead of failing on it.
    pub async fn try_commit(&self, mut chunk: Chunk) -> Result<ChunkOutcome, RunError> {
        if self.lease_lost.load(Ordering::SeqCst) {
            return Err(RunError::LeaseLost);
        }
        if chunk.undo.is_none() {
            chunk.undo = self.undo_mark();
        }
        let outcome = self.engine.store.commit_chunk(&self.op, chunk).await?;
        self.last_progress
            .store(now().timestamp_millis(), Ordering::Relaxed);
        match outcome {
            ChunkOutcome::LeaseLost => Err(RunError::LeaseLost),
            // What was committed stays; another process continues from it.
            ChunkOutcome::Committed { .. } if self.engine.stopping.load(Ordering::SeqCst) => {
                Err(RunError::Released)
            }
            other => Ok(other),
        }
    }

    /// Records that this attempt now undoes the operation's own changes, and why
    /// (`cancelled`, `aborted`, `failed`); every chunk it commits from now on marks the
    /// operation as undoing.
    pub fn begin_undo(&self, reason: &str, message: Option<String>) {
        if let Ok(mut undoing) = self.undoing.lock() {
            *undoing = Some(UndoMark {
                reason: reason.to_string(),
                message,
            });
        }
    }

    /// Whether this attempt has begun undoing (an error then retries that undo; it
    /// must not start another one with a different reason).
    pub fn is_undoing(&self) -> bool {
        self.undo_mark().is_some()
    }

    fn undo_mark(&self) -> Option<UndoMark> {
        self.undoing.lock().ok().and_then(|u| u.clone())
    }

    /// The saved progress state of a resumed attempt, if any.
    pub fn cursor<T: serde::de::DeserializeOwned + Default>(&self) -> T {
        self.op
            .progress_cursor
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default()
    }

    /// Set when earlier attempts used up the failure budget (workers that kept
    /// crashing before committing anything, or transient errors): the operation must
    /// end now, after undoing what it wrote. Takeovers after a graceful release or
    /// after progress do not count.
    pub fn attempts_exhausted(&self) -> Option<String> {
        (self.op.failures >= self.engine.settings.max_attempts).then(|| {
            format!(
                "gave up after {} failed attempts (the workers running it stopped)",
                self.engine.settings.max_attempts
            )
        })
    }

    /// Whether a transient failure now would end the operation instead of a retry.
    pub fn is_last_attempt(&self) -> bool {
        self.op.failures + 1 >= self.engine.settings.max_attempts
    }

    /// The progress state as last committed (what an undo must start from after an
    /// error lost the in-memory state).
    pub async fn committed_cursor<T: serde::de::DeserializeOwned + Default>(&self) -> T {
        match self
            .engine
            .store
            .get_operation(self.op.organization_id, self.op.id)
            .await
        {
            Ok(Some(op)) => op
                .progress_cursor
                .as_deref()
                .and_then(|c| serde_json::from_str(c).ok())
                .unwrap_or_default(),
            _ => self.cursor(),
        }
    }

    /// The message of a failure that ends the operation, or `None` when it is retried.
    pub fn final_failure(&self, err: &RunError) -> Option<String> {
        match err {
            RunError::Failed { message, .. } => Some(message.clone()),
            RunError::Transient(_) if self.is_last_attempt() => Some(format!(
                "failed after {} attempts: the database or the file store was unavailable",
                self.op.failures + 1
            )),
            _ => None,
        }
    }

    /// Milliseconds since the operation first started.
    pub fn elapsed_ms(&self) -> i64 {
        let started = self.op.started_at.unwrap_or_else(now);
        (now() - started).num_milliseconds().max(0)
    }

    /// Seals a before-image bound to this operation and patient.
    pub fn seal_backup(
        &self,
        operation_id: Uuid,
        patient_id: Uuid,
        image: &before_image::BeforeImage,
    ) -> Vec<u8> {
        self.engine
            .keyring
            .seal(&image.to_bytes(), &backup_aad(operation_id, patient_id))
    }
}

/// The associated data of a before-image: its operation and patient.
pub fn backup_aad(operation_id: Uuid, patient_id: Uuid) -> Vec<u8> {
    format!("haven-backup:{operation_id}:{patient_id}").into_bytes()
}

/// The associated data of an operation's sealed parameters.
pub fn parameters_aad(operation_id: Uuid) -> Vec<u8> {
    format!("haven-parameters:{operation_id}").into_bytes()
}

/// An audit entry written by the engine about an operation.
pub fn operation_audit(
    op: &Operation,
    action: &str,
    outcome: &str,
    details: Value,
) -> NewAuditEntry {
    NewAuditEntry::for_operation(op, action, outcome, details)
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Keyring,
        blobs: BlobStore,
        settings: EngineSettings,
    ) -> Self {
        Engine {
            store,
            keyring,
            blobs,
            settings,
            wake: Arc::new(Notify::new()),
            worker_id: format!("{}-{}", std::process::id(), Uuid::new_v4().simple()),
            stopping: AtomicBool::new(false),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        }
    }

    /// Wakes the scheduler early (a new operation was scheduled or cancelled).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Claims one due operation and runs it to the end of this attempt.
    pub async fn run_once(&self) -> anyhow::Result<Ran> {
        let claimed = self.claim(1).await?;
        match claimed.operations.into_iter().next() {
            None => Ok(Ran::Empty),
            Some(op) => {
                let id = op.id;
                self.execute(op).await;
                Ok(Ran::Operation(id))
            }
        }
    }

    /// The scheduler and worker loop: up to `workers` operations at once, claimed
    /// together when several slots are free, sleeping until the next due time (or a
    /// wake-up) when there is nothing to claim. On shutdown, running attempts release
    /// their operations at their next chunk (see `Run::try_commit`).
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        tokio::spawn(self.clone().run_cleanup(shutdown.clone()));
        tokio::spawn(self.clone().run_schedules(shutdown.clone()));
        if self.settings.workers == 0 {
            return;
        }
        let watcher = tokio::spawn(self.clone().watch_queue());
        let slots = Arc::new(tokio::sync::Semaphore::new(self.settings.workers));
        let mut running = tokio::task::JoinSet::new();
        let mut last_sweep = std::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            while running.try_join_next().is_some() {}
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.changed() => break,
            };
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            if last_sweep.elapsed() >= DEPENDANT_SWEEP {
                // The finish of an operation cancels its dependants itself; this only
                // catches what an older version or a crash between steps left behind.
                last_sweep = std::time::Instant::now();
                if let Err(e) = self.store.cancel_orphaned_dependents(now()).await {
                    tracing::warn!(error = %e, "sweeping orphaned dependants failed");
                }
            }
            match self.claim(permits.len()).await {
                Ok(claimed) if !claimed.operations.is_empty() => {
                    for op in claimed.operations {
                        let Some(permit) = permits.pop() else { break };
                        let engine = self.clone();
                        running.spawn(async move {
                            engine.execute(op).await;
                            drop(permit);
                            engine.wake();
                        });
                    }
                }
                Ok(claimed) => {
                    drop(permits);
                    // Work held by another process at that moment: look again soon.
                    let wait = if claimed.contended {
                        CONTENDED_RETRY
                    } else {
                        self.idle_wait().await
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.wake.notified() => {}
                        _ = shutdown.changed() => break,
                    }
                }
                Err(e) => {
                    drop(permits);
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "claiming an operation failed; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => break,
                    }
                }
            }
        }
        watcher.abort();
        self.stopping.store(true, Ordering::SeqCst);
        // Running attempts stop at their next chunk and release their operations; what
        // does not stop in time is dropped, and its lease expires for a takeover.
        let _ = tokio::time::timeout(self.settings.shutdown_timeout, async {
            while running.join_next().await.is_some() {}
        })
        .await;
    }

    /// Wakes this engine when another process schedules or finishes an operation, so
    /// that it need not wait for its next poll. Reconnects after a failure.
    async fn watch_queue(self: Arc<Self>) {
        let wake = || self.wake();
        loop {
            if let Err(e) = self.store.watch_queue(&wake).await {
                tracing::debug!(error = %e, "queue notifications interrupted; polling meanwhile");
                tokio::time::sleep(Duration::from_secs(5)).await;
            } else {
                return;
            }
        }
    }

    async fn claim(&self, want: usize) -> anyhow::Result<crate::store::ops::Claimed> {
        let claimed = self
            .store
            .claim_due(
                &self.worker_id,
                self.settings.lease,
                self.settings.max_per_org,
                want,
            )
            .await?;
        for op in claimed.operations.iter().filter(|o| o.attempt == 1) {
            if let Some(started) = op.started_at {
                let lag = (started - op.scheduled_at).num_milliseconds().max(0);
                self.metrics.lag.observe(lag as f64 / 1000.0);
            }
        }
        Ok(claimed)
    }

    /// How long to sleep: until the next due time, at most 1 s (operations scheduled
    /// by other processes are seen by polling), and 1 s when something is due but
    /// blocked (by a dependency or the per-organization limit): what unblocks it wakes
    /// us (a finish here, a NOTIFY from elsewhere).
    async fn idle_wait(&self) -> Duration {
        const POLL: Duration = Duration::from_secs(1);
        match self.store.next_due_at().await {
            Ok(Some(due)) => {
                let until = (due - now()).to_std().unwrap_or(Duration::ZERO);
                if until.is_zero() {
                    POLL
                } else {
                    until.min(POLL)
                }
            }
            _ => POLL,
        }
    }

    /// Runs one claimed attempt and records its end. A completion refused because a
    /// cancel arrived after the last chunk runs the operation again in the same
    /// attempt, which now sees the cancel and undoes what it did.
    async fn execute(&self, mut op: Operation) {
        let lease_lost = Arc::new(AtomicBool::new(false));
        let last_progress = Arc::new(std::sync::atomic::AtomicI64::new(now().timestamp_millis()));
        // Stops the heartbeat however this attempt ends, even when its task is dropped.
        let _heartbeat =
            AbortOnDrop(self.spawn_heartbeat(&op, lease_lost.clone(), last_progress.clone()));
        loop {
            let run = Run {
                engine: self,
                op: op.clone(),
                lease_lost: lease_lost.clone(),
                last_progress: last_progress.clone(),
                undoing: std::sync::Mutex::new(None),
            };
            // Imports, updates and deletes see this themselves, to undo what they wrote.
            let undoes_itself = matches!(
                op.op_type,
                OperationType::Import | OperationType::Update | OperationType::Delete
            );
            let outcome = match run.attempts_exhausted() {
                Some(message) if !undoes_itself && op.op_type != OperationType::Rollback => {
                    Err(RunError::Failed {
                        message,
                        result: None,
                    })
                }
                _ => self.dispatch(&run).await,
            };
            match self.record_end(&run, outcome).await {
                Ok(Finished::CancelRequested) => {
                    match self.store.get_operation(op.organization_id, op.id).await {
                        Ok(Some(fresh)) if fresh.attempt == op.attempt => op = fresh,
                        _ => return,
                    }
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(operation_id = %op.id, error = format!("{e:#}"), "recording the end of an operation failed");
                    return;
                }
            }
        }
    }

    /// Renews the lease every third of its duration while the attempt makes progress.
    /// An attempt stuck for `STALL_LIMIT` without committing a chunk stops renewing, so
    /// another worker takes the operation over (the stuck one can no longer commit).
    fn spawn_heartbeat(
        &self,
        op: &Operation,
        lost: Arc<AtomicBool>,
        last_progress: Arc<std::sync::atomic::AtomicI64>,
    ) -> tokio::task::JoinHandle<()> {
        const STALL_LIMIT_MS: i64 = 10 * 60 * 1000;
        let store = self.store.clone();
        let (id, attempt, lease) = (op.id, op.attempt, self.settings.lease);
        tokio::spawn(async move {
            let every = lease / 3;
            loop {
                tokio::time::sleep(every).await;
                let stalled_ms = now().timestamp_millis() - last_progress.load(Ordering::Relaxed);
                if stalled_ms > STALL_LIMIT_MS {
                    tracing::warn!(operation_id = %id, "no progress for 10 minutes; letting the lease expire");
                    return;
                }
                match store.heartbeat(id, attempt, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => tracing::warn!(operation_id = %id, error = %e, "heartbeat failed"),
                }
            }
        })
    }

    async fn dispatch(&self, run: &Run<'_>) -> Result<Outcome, RunError> {
        let op = &run.op;
        let sealed = self
            .keyring
            .open(&op.parameters, &parameters_aad(op.id))
            .map_err(|_| RunError::Failed {
                message:
                    "the operation's parameters cannot be decrypted with the configured master key"
                        .into(),
                result: None,
            })?;
        let params: Parameters = serde_json::from_slice(&sealed).map_err(|_| RunError::Failed {
            message: "the operation's parameters are unreadable".into(),
            result: None,
        })?;
        match (op.op_type, params) {
            (OperationType::Import, p @ Parameters::Import { .. }) => import::run(run, p).await,
            (OperationType::Export, p @ Parameters::Export { .. }) => export::run(run, p).await,
            (OperationType::Update, p @ Parameters::Update { .. }) => modify::run(run, p).await,
            (OperationType::Delete, p @ Parameters::Delete { .. }) => modify::run(run, p).await,
            (
                OperationType::Rollback,
                Parameters::Rollback {
                    target_operation_id,
                    force,
                },
            ) => undo::run_rollback(run, target_operation_id, force).await,
            _ => Err(RunError::Failed {
                message: "the operation's parameters do not match its type".into(),
                result: None,
            }),
        }
    }

    /// How an attempt's outcome is written: a final status, a retry, a retry of the
    /// undo, or a release; fenced, with its audit entries, in one transaction.
    fn ending_of(&self, run: &Run<'_>, outcome: Result<Outcome, RunError>) -> Option<Finish> {
        let op = &run.op;
        let at = now();
        let base = Finish {
            operation_id: op.id,
            attempt: op.attempt,
            ending: Ending::Final(Status::Failed),
            result: None,
            error_message: None,
            output_blob: None,
            output_expires_at: None,
            completed_at: at,
            audit: None,
            rolled_back: None,
        };
        let failed = |message: String, result: Option<Value>| Finish {
            audit: Some(operation_audit(
                op,
                "operation.fail",
                "failure",
                json!({"reason": message}),
            )),
            result,
            error_message: Some(message),
            ..base.clone()
        };
        let error = match outcome {
            Ok(Outcome::Completed {
                result,
                output,
                rolled_back,
            }) => {
                return Some(Finish {
                    ending: Ending::Final(Status::Completed),
                    audit: Some(operation_audit(
                        op,
                        "operation.complete",
                        "success",
                        json!({}),
                    )),
                    result: Some(result),
                    output_blob: output.as_ref().map(|(b, _)| b.clone()),
                    output_expires_at: output.map(|(_, e)| e),
                    rolled_back: rolled_back.map(|(target, details)| {
                        // The target's own trail records that it was rolled back.
                        let mut entry =
                            operation_audit(op, "operation.rolled_back", "success", details);
                        entry.resource_id = Some(target.to_string());
                        entry.operation_id = Some(target);
                        (target, entry)
                    }),
                    ..base
                });
            }
            Ok(Outcome::Cancelled { result, note }) => {
                return Some(Finish {
                    ending: Ending::Final(Status::Cancelled),
                    audit: Some(operation_audit(
                        op,
                        "operation.cancel",
                        "success",
                        json!({"while": "running"}),
                    )),
                    result: Some(result),
                    error_message: Some(note.unwrap_or_else(|| {
                        "cancelled while running; its partial changes were undone".into()
                    })),
                    ..base
                })
            }
            Ok(Outcome::Failed { result, message }) => return Some(failed(message, Some(result))),
            Err(RunError::LeaseLost) => {
                tracing::warn!(operation_id = %op.id, "lease lost; another worker continues");
                return None;
            }
            Err(RunError::Released) => {
                tracing::info!(operation_id = %op.id, "stopping: operation released for another process");
                return Some(Finish {
                    ending: Ending::Release,
                    ..base
                });
            }
            Err(e) => e,
        };
        if let Some(undo) = run.undo_mark() {
            // An undo is never given up: it is retried (by any worker) until it
            // completes, and the operation stays `processing` and undoing meanwhile.
            let detail = match &error {
                RunError::Failed { message, .. } => message.clone(),
                RunError::Transient(e) => format!("{e:#}"),
                _ => String::new(),
            };
            tracing::warn!(operation_id = %op.id, attempt = op.attempt, error = %detail, "undo interrupted; retrying");
            let backoff = retry_backoff(op.attempt, UNDO_RETRY_CAP);
            return Some(Finish {
                ending: Ending::RetryUndo {
                    at: at + chrono::Duration::from_std(backoff).unwrap_or_default(),
                    undo,
                },
                error_message: Some(format!(
                    "undoing its partial changes; attempt {} was interrupted and is retried",
                    op.attempt
                )),
                ..base
            });
        }
        Some(match error {
            RunError::Failed { message, result } => failed(message, result),
            RunError::Transient(e) => {
                let failures = op.failures + 1;
                tracing::warn!(operation_id = %op.id, attempt = op.attempt, failures, error = format!("{e:#}"), "transient failure");
                if failures < self.settings.max_attempts {
                    let backoff = retry_backoff(failures, RETRY_CAP);
                    Finish {
                        ending: Ending::Retry {
                            at: at + chrono::Duration::from_std(backoff).unwrap_or_default(),
                        },
                        error_message: Some(format!(
                            "attempt {} failed temporarily; retrying",
                            op.attempt
                        )),
                        ..base
                    }
                } else {
                    failed(
                        format!(
                            "failed after {failures} attempts: the database or the file store was unavailable"
                        ),
                        None,
                    )
                }
            }
            // Handled above.
            RunError::LeaseLost | RunError::Released => return None,
        })
    }

    async fn record_end(
        &self,
        run: &Run<'_>,
        outcome: Result<Outcome, RunError>,
    ) -> anyhow::Result<Finished> {
        let op = &run.op;
        let Some(finish) = self.ending_of(run, outcome) else {
            return Ok(Finished::LeaseLost);
        };
        let ending = finish.ending.clone();
        let published = finish.output_blob.clone();
        let (completed_at, rows_per_second) = (
            finish.completed_at,
            finish
                .result
                .as_ref()
                .and_then(|r| r.get("rows_per_second"))
                .and_then(Value::as_f64),
        );
        let finished = self.store.finish_operation(finish).await?;
        self.observe_end(op, finished, &ending, completed_at, rows_per_second);
        match (finished, ending) {
            (Finished::Done, Ending::Final(_)) => {
                // Replaced and deleted values stay readable in SQLite's write-ahead log
                // until a checkpoint: empty it after operations that replace or remove
                // patient data (a no-op on PostgreSQL).
                let replaced = matches!(
                    op.op_type,
                    OperationType::Update | OperationType::Delete | OperationType::Rollback
                ) || run.is_undoing();
                if replaced {
                    if let Err(e) = self.store.checkpoint_wal().await {
                        tracing::warn!(error = %e, "checkpointing the write-ahead log failed");
                    }
                }
                if op.op_type == OperationType::Import {
                    // The upload holds patient data; once the import has ended nobody
                    // reads it.
                    self.blobs.remove(&BlobStore::upload_name(op.id)).await;
                }
                // Files of other attempts (a stale worker's, a crashed one's) are
                // never published: remove them.
                if op.op_type == OperationType::Export {
                    self.blobs
                        .remove_exports_except(op.id, published.as_deref())
                        .await;
                }
            }
            (Finished::LeaseLost, _) if op.op_type == OperationType::Export => {
                // This attempt's own file; the attempt that holds the lease writes its own.
                self.blobs.remove_export_attempt(op.id, op.attempt).await;
            }
            _ => {}
        }
        Ok(finished)
    }
}

impl Engine {
    /// Counts an attempt's end in the metrics of this process.
    fn observe_end(
        &self,
        op: &Operation,
        finished: Finished,
        ending: &Ending,
        completed_at: DateTime<Utc>,
        rows_per_second: Option<f64>,
    ) {
        use crate::metrics::{TypeLabel, TypeStatus};
        if finished != Finished::Done {
            return;
        }
        let kind = TypeLabel {
            r#type: op.op_type.as_str().into(),
        };
        match ending {
            Ending::Final(status) => {
                self.metrics
                    .finished
                    .get_or_create(&TypeStatus {
                        r#type: op.op_type.as_str().into(),
                        status: status.as_str().into(),
                    })
                    .inc();
                if let Some(started) = op.started_at {
                    let seconds =
                        (completed_at - started).num_milliseconds().max(0) as f64 / 1000.0;
                    self.metrics.duration.get_or_create(&kind).observe(seconds);
                }
                if let (Status::Completed, Some(rate)) = (status, rows_per_second) {
                    self.metrics
                        .rows_per_second
                        .get_or_create(&kind)
                        .observe(rate);
                }
            }
            Ending::Retry { .. } | Ending::RetryUndo { .. } => {
                self.metrics.retries.get_or_create(&kind).inc();
            }
            Ending::Release => {}
        }
    }
}

/// How often a process looks for operations orphaned by a failed dependency that no
/// finish took care of.
const DEPENDANT_SWEEP: Duration = Duration::from_secs(30);
/// How soon to look again when due work was held by another process.
const CONTENDED_RETRY: Duration = Duration::from_millis(20);
/// Longest wait between retries of a transient failure.
const RETRY_CAP: Duration = Duration::from_secs(300);
/// Longest wait between retries of an interrupted undo.
const UNDO_RETRY_CAP: Duration = Duration::from_secs(60);

/// Exponential backoff from 1 s for the n-th retry, capped, with "equal jitter" (a
/// random half of it) so that operations failed by one outage do not retry in step.
fn retry_backoff(n: i64, cap: Duration) -> Duration {
    use rand::Rng;
    let exp = (n - 1).clamp(0, 16) as u32;
    let base = Duration::from_secs(1u64 << exp).min(cap);
    base.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}
