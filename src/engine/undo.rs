//! Undoing an operation's changes from the data it left: the patients an import created
//! (tagged with its id) are removed, and every before-image is written back. Used when a
//! running operation is cancelled or aborted, and by rollback operations (SPEC 4.6).
//!
//! The undo commits in chunks under the running operation's lease, with its own cursor
//! inside the progress cursor, so a crash mid-undo resumes where it stopped. Once
//! begun, an undo is never abandoned: an error retries it (see `Engine::ending_of`)
//! and the operation shows `undoing` until it is done. Patients it must leave alone
//! are stored as rows of `operation_conflicts`, never in the cursor.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::before_image::BeforeImage;
use super::{backup_aad, Outcome, Run, RunError};
use crate::domain::filters::PatientFilters;
use crate::domain::patient::Patient;
pub use crate::store::ops::Conflict;
use crate::store::ops::{Backup, Chunk, ChunkOutcome, PatientScan, PatientWrite, WrittenColumns};
use crate::store::Page;

/// Patients an undo chunk removes or restores, in one transaction with the cursor
/// (2,000 like an import chunk since issue 13; 500 before).
const UNDO_CHUNK: i64 = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    #[default]
    Cancelled,
    Aborted,
    /// The operation failed part-way; `UndoCursor::message` says why.
    Failed,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Remove,
    Restore,
    Done,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Cancelled => "cancelled",
            Reason::Aborted => "aborted",
            Reason::Failed => "failed",
            Reason::Rollback => "rollback",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(Value::String(text.to_string())).ok()
    }
}

/// How many conflicts a result lists; all of them are paged through
/// `GET /api/v2/bulk-operations/{id}/conflicts`.
pub const CONFLICT_SAMPLE: i64 = 100;

/// The conflict count; cursors written before conflicts became rows held the list.
fn count_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum CountOrList {
        Count(i64),
        List(Vec<Value>),
    }
    Ok(match CountOrList::deserialize(d)? {
        CountOrList::Count(n) => n,
        CountOrList::List(list) => list.len() as i64,
    })
}

/// Where an undo stands; saved with every chunk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UndoCursor {
    pub reason: Reason,
    pub phase: Phase,
    pub after: Option<Uuid>,
    pub removed: i64,
    pub restored: i64,
    /// Patients left alone so far (the rows are in `operation_conflicts`).
    #[serde(default, deserialize_with = "count_or_list")]
    pub conflicts: i64,
    /// Patients to look at (created plus backed up), counted when the undo starts.
    #[serde(default)]
    pub total: Option<i64>,
    /// Why the operation is being undone, for its final `error_message`.
    #[serde(default)]
    pub message: Option<String>,
}

impl UndoCursor {
    fn processed(&self) -> i64 {
        self.removed + self.restored + self.conflicts
    }
}

impl UndoCursor {
    pub fn new(reason: Reason) -> Self {
        UndoCursor {
            reason,
            ..Default::default()
        }
    }
}

/// Undoes `target`'s changes. Without `force`, a patient whose version moved on since
/// the operation is listed as a conflict and left alone.
pub async fn undo_operation(
    run: &Run<'_>,
    target: Uuid,
    force: bool,
    mut state: UndoCursor,
    save: &(dyn Fn(&UndoCursor) -> String + Send + Sync),
) -> Result<UndoCursor, RunError> {
    let store = &run.engine.store;
    let org = run.op.organization_id;
    let no_filters = PatientFilters::default();
    if state.total.is_none() {
        let created = store
            .count_patients(PatientScan {
                org,
                filters: &no_filters,
                include_deleted: true,
                imported_by: Some(target),
                page: Page {
                    after: None,
                    limit: 0,
                },
            })
            .await?;
        state.total = Some(created + store.count_backups(target).await?);
        // Marks the operation as undoing at once, with where the undo starts, before
        // anything is undone: a crash from here on resumes the undo.
        commit_undo_chunk(run, Chunk::default(), &state, save).await?;
    }
    while state.phase == Phase::Remove {
        let page = store
            .scan_patients(PatientScan {
                org,
                filters: &no_filters,
                include_deleted: true,
                imported_by: Some(target),
                page: Page {
                    after: state.after,
                    limit: UNDO_CHUNK,
                },
            })
            .await?;
        let mut chunk = Chunk::default();
        let mut next = state.clone();
        match page.last() {
            None => {
                next.phase = Phase::Restore;
                next.after = None;
            }
            Some(last) => next.after = Some(last.id),
        }
        for patient in &page {
            // Created at version 1; a later version means someone edited it since.
            if patient.version != 1 && !force {
                next.conflicts += 1;
                chunk.conflicts.push(Conflict {
                    patient_id: patient.id,
                    reason: "changed after the import (version moved on)".into(),
                });
            } else {
                chunk.removals.push(patient.id);
                next.removed += 1;
            }
        }
        if !force {
            chunk.removal_version = Some(1);
        }
        chunk.cursor = save(&next);
        chunk.processed = next.processed();
        chunk.total = next.total;
        match run.try_commit(chunk).await? {
            // Edited between our read and the delete: read the page again.
            ChunkOutcome::Conflict(_) => continue,
            _ => state = next,
        }
    }
    // The next page, read while the previous chunk committed.
    let mut read_ahead = None;
    while state.phase == Phase::Restore {
        let (backups, current) = match read_ahead.take() {
            Some(page) => page,
            None => restore_page(run, target, state.after).await?,
        };
        let Some(last) = backups.last() else {
            state.phase = Phase::Done;
            commit_undo_chunk(run, Chunk::default(), &state, save).await?;
            break;
        };
        let next_after = Some(last.patient_id);
        let mut chunk = Chunk::default();
        let mut restored = 0;
        let mut conflicts = Vec::new();
        let mut images = Vec::new();
        for backup in &backups {
            let Some(patient) = current.get(&backup.patient_id) else {
                conflicts.push(Conflict {
                    patient_id: backup.patient_id,
                    reason: "the patient no longer exists".into(),
                });
                continue;
            };
            if patient.version != backup.version_after && !force {
                conflicts.push(Conflict {
                    patient_id: patient.id,
                    reason: "changed after the operation (version moved on)".into(),
                });
                continue;
            }
            let plain = run
                .engine
                .keyring
                .open(&backup.before_image, &backup_aad(target, backup.patient_id))
                .map_err(|_| RunError::Failed {
                    message: "a backup cannot be decrypted with the configured master key".into(),
                    result: None,
                })?;
            let unreadable = |_| RunError::Failed {
                message: "a backup is unreadable".into(),
                result: None,
            };
            let (fields, deleted_at) = BeforeImage::from_bytes(&plain)
                .and_then(|image| image.restore(patient))
                .map_err(unreadable)?;
            images.push((patient, fields, deleted_at));
        }
        // A restored UNHCR number may have been given to another patient since; the
        // uniqueness rule wins over the restore, even with force. Only a number that
        // changes, or comes back with a patient restored from deletion, can be taken:
        // a live patient's own number is unique already (most undos look up nothing).
        let numbers: Vec<String> = images
            .iter()
            .filter(|(patient, fields, _)| {
                fields.unhcr_number != patient.fields.unhcr_number || patient.deleted_at.is_some()
            })
            .filter_map(|(_, fields, _)| fields.unhcr_number.clone())
            .collect();
        let holders = store.patients_by_unhcr(org, &numbers).await?;
        let mut written = WrittenColumns::default();
        for (patient, fields, deleted_at) in images {
            let taken = fields.unhcr_number.as_ref().is_some_and(|n| {
                holders
                    .iter()
                    .any(|h| h.id != patient.id && h.fields.unhcr_number.as_ref() == Some(n))
            });
            if taken {
                conflicts.push(Conflict {
                    patient_id: patient.id,
                    reason: "its unhcr_number now belongs to another patient".into(),
                });
                continue;
            }
            written.add_change(patient, &fields, deleted_at);
            chunk.writes.push(PatientWrite {
                patient_id: patient.id,
                expected_version: patient.version,
                fields,
                deleted_at,
                backup: None,
            });
            restored += 1;
        }
        chunk.written = Some(written);
        let mut next = state.clone();
        next.after = next_after;
        next.restored += restored;
        next.conflicts += conflicts.len() as i64;
        chunk.conflicts = conflicts;
        chunk.cursor = save(&next);
        chunk.processed = next.processed();
        chunk.total = next.total;
        // As in an update: the next page's patients are others than this chunk's.
        let (outcome, next_page) =
            tokio::join!(run.try_commit(chunk), restore_page(run, target, next_after));
        match outcome? {
            // Someone edited a patient between our read and write: read the page again.
            ChunkOutcome::Conflict(_) => continue,
            _ => {
                state = next;
                read_ahead = next_page.ok();
            }
        }
    }
    Ok(state)
}

/// A page of `target`'s before-images after `after`, with the patients they are of as
/// they are now.
async fn restore_page(
    run: &Run<'_>,
    target: Uuid,
    after: Option<Uuid>,
) -> Result<(Vec<Backup>, HashMap<Uuid, Patient>), RunError> {
    let store = &run.engine.store;
    let backups = store.backups(target, after, UNDO_CHUNK).await?;
    if backups.is_empty() {
        return Ok((backups, HashMap::new()));
    }
    let ids: Vec<Uuid> = backups.iter().map(|b| b.patient_id).collect();
    let current = store
        .patients_by_id(run.op.organization_id, &ids)
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    Ok((backups, current))
}

async fn commit_undo_chunk(
    run: &Run<'_>,
    mut chunk: Chunk,
    state: &UndoCursor,
    save: &(dyn Fn(&UndoCursor) -> String + Send + Sync),
) -> Result<(), RunError> {
    chunk.cursor = save(state);
    chunk.processed = state.processed();
    chunk.total = state.total;
    run.commit(chunk).await?;
    Ok(())
}

/// How an undone operation ends: cancelled, or failed with the reason it was undone.
pub fn ending(reason: Reason, message: Option<String>, result: Value) -> Outcome {
    match reason {
        Reason::Cancelled => Outcome::Cancelled { result, note: None },
        Reason::Aborted => Outcome::Failed {
            message: message.unwrap_or_else(|| "aborted; nothing was changed".into()),
            result,
        },
        Reason::Failed | Reason::Rollback => Outcome::Failed {
            message: format!(
                "{}; its partial changes were undone",
                message.unwrap_or_else(|| "the operation failed".into())
            ),
            result,
        },
    }
}

/// The `result.conflicts` of SPEC 10 (a list of `{"patient_id","reason"}`), cut to
/// the first `CONFLICT_SAMPLE`, and `conflicts_total`, the whole count.
pub async fn conflicts_json(run: &Run<'_>) -> Result<(Value, i64), RunError> {
    let store = &run.engine.store;
    let org = run.op.organization_id;
    let sample = store
        .conflicts(org, run.op.id, None, CONFLICT_SAMPLE)
        .await?;
    let total = store.count_conflicts(org, run.op.id).await?;
    let list = sample
        .iter()
        .map(|c| json!({"patient_id": c.patient_id, "reason": c.reason}))
        .collect::<Vec<_>>();
    Ok((json!(list), total))
}

/// A rollback operation: undoes its target; its completion marks the target
/// `rolled_back` in the same fenced transaction.
pub async fn run_rollback(run: &Run<'_>, target: Uuid, force: bool) -> Result<Outcome, RunError> {
    let state: UndoCursor = run
        .op
        .progress_cursor
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or_else(|| UndoCursor::new(Reason::Rollback));
    if run.op.progress_cursor.is_none() && run.op.undo_reason.is_none() {
        // Checked again here, not only when the request came in: two rollbacks must
        // never both restore.
        let target_op = run
            .engine
            .store
            .get_operation(run.op.organization_id, target)
            .await?;
        if target_op.map(|t| t.status) != Some(crate::domain::operation::Status::Completed) {
            return Err(RunError::Failed {
                message: "the target operation is no longer completed (already rolled back?)"
                    .into(),
                result: None,
            });
        }
    }
    // From here on the restore is finished whatever happens (retried on errors).
    run.begin_undo(Reason::Rollback.as_str(), None);
    let save = |s: &UndoCursor| serde_json::to_string(s).unwrap_or_default();
    let done = undo_operation(run, target, force, state, &save).await?;
    let (conflicts, conflicts_total) = conflicts_json(run).await?;
    Ok(Outcome::Completed {
        result: json!({
            "target_operation_id": target,
            "patients_restored": done.restored,
            "patients_removed": done.removed,
            "conflicts": conflicts,
            "conflicts_total": conflicts_total,
            "duration_ms": run.elapsed_ms(),
        }),
        output: None,
        rolled_back: Some((
            target,
            json!({"rollback_operation_id": run.op.id, "conflicts": conflicts_total}),
        )),
    })
}
