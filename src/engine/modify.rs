//! Update and delete runners: page through the targeted patients by id, write each
//! change with its sealed before-image, and commit page by page with the cursor.

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::undo::{self, UndoCursor};
use super::{Outcome, Run, RunError};
use crate::domain::now;
use crate::domain::operation::Parameters;
use crate::store::ops::{Chunk, ChunkOutcome, PatientScan, PatientWrite};
use crate::store::Page;

const MODIFY_PAGE: i64 = 500;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct ModifyCursor {
    after: Option<Uuid>,
    matched: i64,
    changed: i64,
    total: i64,
    #[serde(default)]
    undo: Option<UndoCursor>,
}

pub async fn run(run: &Run<'_>, params: Parameters) -> Result<Outcome, RunError> {
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
    let mut cursor: ModifyCursor = run.cursor();
    if let Some(state) = cursor.undo.clone() {
        return undo_and_cancel(run, cursor, state, is_delete).await;
    }
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
    loop {
        let page = engine.store.scan_patients(scan(cursor.after)).await?;
        let Some(last) = page.last() else { break };
        let mut next = cursor.clone();
        next.after = Some(last.id);
        let mut chunk = Chunk::default();
        let at = now();
        for patient in &page {
            next.matched += 1;
            let mut fields = patient.fields.clone();
            let deleted_at = if is_delete {
                Some(at)
            } else {
                // Validated when scheduled; a rule failing now (a date gone past) skips.
                if !fields.apply_json(&changes, today).is_empty() || fields == patient.fields {
                    continue;
                }
                None
            };
            next.changed += 1;
            let backup = create_backup.then(|| {
                let image = json!({"fields": patient.fields, "deleted_at": patient.deleted_at});
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
        chunk.processed = next.matched;
        chunk.total = Some(cursor.total.max(next.matched));
        chunk.cursor = serde_json::to_string(&next).unwrap_or_default();
        match run.try_commit(chunk).await? {
            // A patient was edited between our read and our write: read the page again.
            ChunkOutcome::Conflict(_) => continue,
            ChunkOutcome::LeaseLost => return Err(RunError::LeaseLost),
            ChunkOutcome::Committed { cancel_requested } => {
                cursor = next;
                if cancel_requested {
                    let state = UndoCursor::new(undo::Reason::Cancelled);
                    cursor.undo = Some(state.clone());
                    return undo_and_cancel(run, cursor, state, is_delete).await;
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
    })
}

async fn undo_and_cancel(
    run: &Run<'_>,
    cursor: ModifyCursor,
    state: UndoCursor,
    is_delete: bool,
) -> Result<Outcome, RunError> {
    let save = move |s: &UndoCursor| {
        let mut c = cursor.clone();
        c.undo = Some(s.clone());
        serde_json::to_string(&c).unwrap_or_default()
    };
    undo::undo_operation(run, run.op.id, true, state, &save).await?;
    let result = if is_delete {
        json!({"patients_deleted": 0})
    } else {
        json!({"patients_matched": 0, "patients_updated": 0, "backup_id": null})
    };
    Ok(Outcome::Cancelled { result })
}
