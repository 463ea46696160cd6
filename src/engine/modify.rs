//! Update and delete runners: page through the targeted patients by id, write each
//! change with its sealed before-image, and commit page by page with the cursor.

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::before_image::BeforeImage;
use super::undo::{self, UndoCursor};
use super::{Outcome, Run, RunError};
use crate::domain::now;
use crate::domain::operation::Parameters;
use crate::store::ops::{Chunk, ChunkOutcome, PatientScan, PatientWrite, WrittenColumns};
use crate::store::Page;

/// Patients a chunk of an update or delete changes, in one transaction with the cursor
/// (2,000 like an import chunk since issue 13; 500 before).
const MODIFY_PAGE: i64 = 2_000;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct ModifyCursor {
    after: Option<Uuid>,
    matched: i64,
    changed: i64,
    total: i64,
    #[serde(default)]
    undo: Option<UndoCursor>,
}

/// Runs an update or delete; if it cannot finish (cancelled, failed), what it changed
/// is restored from its before-images, so it never leaves a partial change behind.
pub async fn run(run: &Run<'_>, params: Parameters) -> Result<Outcome, RunError> {
    let is_delete = matches!(params, Parameters::Delete { .. });
    let create_backup = !matches!(
        params,
        Parameters::Update {
            create_backup: false,
            ..
        }
    );
    let cursor: ModifyCursor = run.cursor();
    if let Some(state) = cursor.undo.clone() {
        return undo_and_end(run, cursor, state, is_delete, create_backup).await;
    }
    if let Some(reason) = run.op.undo_reason.as_deref().and_then(undo::Reason::parse) {
        // An undo that stopped before its first chunk: begin it again.
        let mut state = UndoCursor::new(reason);
        state.message = run.op.undo_message.clone();
        return undo_and_end(run, cursor, state, is_delete, create_backup).await;
    }
    if run.op.cancel_requested {
        let state = UndoCursor::new(undo::Reason::Cancelled);
        return undo_and_end(run, cursor, state, is_delete, create_backup).await;
    }
    if let Some(message) = run.attempts_exhausted() {
        let mut state = UndoCursor::new(undo::Reason::Failed);
        state.message = Some(message);
        return undo_and_end(run, cursor, state, is_delete, create_backup).await;
    }
    match modify_rows(run, params, cursor).await {
        Err(err) if run.is_undoing() => Err(err),
        Err(err) => match run.final_failure(&err) {
            Some(message) => {
                let mut state = UndoCursor::new(undo::Reason::Failed);
                state.message = Some(message);
                let committed: ModifyCursor = run.committed_cursor().await;
                undo_and_end(run, committed, state, is_delete, create_backup).await
            }
            None => Err(err),
        },
        done => done,
    }
}

async fn modify_rows(
    run: &Run<'_>,
    params: Parameters,
    mut cursor: ModifyCursor,
) -> Result<Outcome, RunError> {
    let (targets, changes, create_backup, is_delete) = match params {
        Parameters::Update {
            targets,
            changes,
            create_backup,
        } => (targets, changes, create_backup, false),
        Parameters::Delete { targets } => (targets, Default::default(), true, true),
        _ => {
            return Err(RunError::Failed {
                message: "not an update or delete".into(),
                result: None,
            })
        }
    };
    let engine = run.engine;
    let org = run.op.organization_id;
    let filters = targets.as_filters();
    let today = chrono::Utc::now().date_naive();
    let scan = |after| PatientScan {
        org,
        filters: &filters,
        include_deleted: false,
        imported_by: None,
        page: Page {
            after,
            limit: MODIFY_PAGE,
        },
    };
    if cursor.after.is_none() {
        cursor.total = engine.store.count_patients(scan(None)).await?;
    }
    // The next page, read while the previous chunk committed.
    let mut read_ahead = None;
    loop {
        let page = match read_ahead.take() {
            Some(page) => page,
            None => engine.store.scan_patients(scan(cursor.after)).await?,
        };
        let Some(last) = page.last() else { break };
        let mut next = cursor.clone();
        next.after = Some(last.id);
        let mut chunk = Chunk::default();
        let mut written = WrittenColumns::default();
        let at = now();
        for patient in &page {
            next.matched += 1;
            let mut fields = patient.fields.clone();
            let deleted_at = if is_delete {
                Some(at)
            } else {
                // Validated when scheduled; a rule failing now (a date gone past) skips.
                if !fields.apply_json(&changes, today).is_empty() {
                    continue;
                }
                None
            };
            // Compared once: the columns to write and the before-image both need it.
            let changed: Vec<&'static str> = patient.fields.differing_fields(&fields).collect();
            if !is_delete && changed.is_empty() {
                continue;
            }
            next.changed += 1;
            written.add(&changed, deleted_at != patient.deleted_at);
            let backup = create_backup.then(|| {
                let image = BeforeImage::of_fields(patient, &changed);
                run.seal_backup(run.op.id, patient.id, &image)
            });
            chunk.writes.push(PatientWrite {
                patient_id: patient.id,
                expected_version: patient.version,
                fields,
                deleted_at,
                backup,
            });
        }
        if run.op.dry_run {
            chunk.writes.clear();
        }
        chunk.written = Some(written);
        chunk.processed = next.matched;
        chunk.total = Some(cursor.total.max(next.matched));
        chunk.cursor = serde_json::to_string(&next).unwrap_or_default();
        // The next page holds other patients than this chunk writes, so it is read
        // while the chunk commits (the database works on both, and on 2 cores the
        // engine's work overlaps the database's). A patient edited in between fails
        // the version check of its own chunk, which then reads its page again.
        let (outcome, next_page) = tokio::join!(
            run.try_commit(chunk),
            engine.store.scan_patients(scan(next.after))
        );
        match outcome? {
            // A patient was edited between our read and our write: read the page again.
            ChunkOutcome::Conflict(_) => continue,
            ChunkOutcome::LeaseLost => return Err(RunError::LeaseLost),
            ChunkOutcome::Committed { cancel_requested } => {
                cursor = next;
                // A failed read is simply read again.
                read_ahead = next_page.ok();
                if cancel_requested {
                    let state = UndoCursor::new(undo::Reason::Cancelled);
                    return undo_and_end(run, cursor, state, is_delete, create_backup).await;
                }
            }
        }
    }
    let result = if is_delete {
        json!({"patients_deleted": cursor.changed, "duration_ms": run.elapsed_ms(), "dry_run": run.op.dry_run})
    } else {
        json!({
            "patients_matched": cursor.matched,
            "patients_updated": cursor.changed,
            "backup_id": (create_backup && !run.op.dry_run).then_some(run.op.id),
            "duration_ms": run.elapsed_ms(),
            "dry_run": run.op.dry_run,
        })
    };
    Ok(Outcome::Completed {
        result,
        output: None,
        rolled_back: None,
    })
}

/// Restores what this operation changed (its cursor carries the undo's progress, so a
/// crash mid-undo resumes it) and ends it as cancelled or failed. Without a backup
/// nothing can be restored: it ends saying how many patients stay changed.
async fn undo_and_end(
    run: &Run<'_>,
    mut cursor: ModifyCursor,
    state: UndoCursor,
    is_delete: bool,
    create_backup: bool,
) -> Result<Outcome, RunError> {
    let reason = state.reason;
    if !create_backup {
        let kept = format!(
            "{} patients were already updated; the update ran without a backup, so they stay updated",
            cursor.changed
        );
        let message = match &state.message {
            Some(m) => format!("{m}; {kept}"),
            None => kept,
        };
        let result = json!({"patients_matched": cursor.matched, "patients_updated": cursor.changed,
            "backup_id": null, "duration_ms": run.elapsed_ms()});
        return Ok(match reason {
            undo::Reason::Cancelled => Outcome::Cancelled {
                result,
                note: Some(message),
            },
            _ => Outcome::Failed { message, result },
        });
    }
    run.begin_undo(reason.as_str(), state.message.clone());
    cursor.undo = Some(state.clone());
    let save = move |s: &UndoCursor| {
        let mut c = cursor.clone();
        c.undo = Some(s.clone());
        serde_json::to_string(&c).unwrap_or_default()
    };
    // Not forced: a patient someone edited meanwhile keeps the edit and is listed.
    let done = undo::undo_operation(run, run.op.id, false, state, &save).await?;
    let (conflicts, conflicts_total) = undo::conflicts_json(run).await?;
    let result = if is_delete {
        json!({"patients_deleted": 0, "duration_ms": run.elapsed_ms(), "conflicts": conflicts,
            "conflicts_total": conflicts_total})
    } else {
        json!({"patients_matched": 0, "patients_updated": 0, "backup_id": null,
            "duration_ms": run.elapsed_ms(), "conflicts": conflicts, "conflicts_total": conflicts_total})
    };
    Ok(undo::ending(reason, done.message, result))
}
