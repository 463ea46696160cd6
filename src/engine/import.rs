//! Import runner: reads the encrypted upload in chunks, validates each row with the
//! patient rules, and commits valid rows with the progress cursor.
//!
//! Resume: the cursor counts the records consumed; a new attempt skips that many.
//! Duplicates within the file are caught by a set of 64-bit hashes of the UNHCR numbers
//! seen (8 bytes a row: the one thing that grows with the file); duplicates with the
//! database by one lookup per chunk.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::before_image::BeforeImage;
use super::{undo, Outcome, Run, RunError};
use crate::blobs::{BlobStore, BlockingBlobReader};
use crate::domain::operation::{ImportMode, OnError, Parameters};
use crate::domain::patient::{DateFormat, Patient, PatientFields, RawValue};
use crate::domain::{new_id, now};
use crate::formats::csv_import::{self, ColumnPlan, CsvRecordReader};
use crate::store::ops::{Chunk, ChunkOutcome, PatientWrite, RowError};

/// Rows per chunk: one transaction each, with the progress cursor. 2,000 rows a
/// commit (500 before issue 13): a quarter of the fsynced commits and of the per-chunk
/// lookups, still a small transaction (about 0.3 MB of rows).
pub const CHUNK_ROWS: usize = 2_000;

/// Progress saved with every chunk.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ImportCursor {
    pub records: i64,
    pub imported: i64,
    pub updated: i64,
    pub skipped: i64,
    pub failed: i64,
    /// Set once an `abort` import met an invalid row: nothing more is written.
    pub stopped_writing: bool,
    /// Set when the partial import is being undone (after a cancel or an abort).
    #[serde(default)]
    pub undo: Option<undo::UndoCursor>,
}

type Reader = CsvRecordReader<crate::crypto::DecryptedReader<BlockingBlobReader>>;

struct Source {
    reader: Reader,
    plan: ColumnPlan,
    /// CSV column name of each patient field, for error reports.
    column_of: HashMap<&'static str, String>,
}

/// Opens the stored upload for the blocking reader.
async fn open_upload(blobs: &BlobStore, blob: &str) -> Result<BlockingBlobReader, RunError> {
    blobs.open_blocking(blob).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            // Removed from the blob store: retrying cannot bring it back.
            RunError::Failed {
                message:
                    "the uploaded file is missing from the file store; schedule the import again"
                        .into(),
                result: None,
            }
        } else {
            e.into()
        }
    })
}

/// Decrypts the upload and plans its columns (blocking reads: run it with
/// `spawn_blocking`).
fn open_source(
    keyring: &crate::crypto::Keyring,
    file: BlockingBlobReader,
    blob: &str,
    mapping: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Source, RunError> {
    let plain = keyring.decrypted_reader(file, &BlobStore::aad(blob));
    let reader = csv_import::open(plain).map_err(file_error)?;
    let plan =
        csv_import::plan_columns(reader.header(), mapping).map_err(|errors| RunError::Failed {
            message: errors
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
            result: None,
        })?;
    let column_of = plan
        .targets
        .iter()
        .zip(reader.header())
        .filter_map(|(target, name)| target.map(|t| (t, name.clone())))
        .collect();
    Ok(Source {
        reader,
        plan,
        column_of,
    })
}

/// A read error of the stored file is an outage worth retrying, unless the file does
/// not decrypt; anything wrong with the CSV itself is not.
fn file_error(err: csv_import::ImportFileError) -> RunError {
    match err {
        csv_import::ImportFileError::Unreadable { kind, .. }
            if kind != std::io::ErrorKind::InvalidData =>
        {
            RunError::Transient(anyhow::anyhow!("{err}"))
        }
        _ => RunError::Failed {
            message: err.to_string(),
            result: None,
        },
    }
}

fn unhcr_key(number: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    number.hash(&mut h);
    h.finish()
}

/// One parsed record: its row number and values, or the file-level problem.
struct Record {
    row: i64,
    values: Vec<(&'static str, RawValue)>,
}

fn next_batch(source: &mut Source, max: usize) -> Result<Vec<Record>, RunError> {
    let mut batch = Vec::with_capacity(max);
    while batch.len() < max {
        match source.reader.next_record() {
            None => break,
            Some(Err(e)) => return Err(file_error(e)),
            Some(Ok(row)) => batch.push(Record {
                row: row.row as i64,
                values: csv_import::row_values(&source.plan, &row.record),
            }),
        }
    }
    Ok(batch)
}

/// Runs an import; if it cannot finish (cancelled, aborted on invalid rows, failed),
/// what it wrote is undone, so it never leaves a partial import behind.
pub async fn run(run: &Run<'_>, params: Parameters) -> Result<Outcome, RunError> {
    let cursor: ImportCursor = run.cursor();
    if let Some(undo_state) = cursor.undo.clone() {
        return finish_undo(run, cursor, undo_state).await;
    }
    if let Some(reason) = run.op.undo_reason.as_deref().and_then(undo::Reason::parse) {
        // An undo that stopped before its first chunk: begin it again.
        return start_undo(run, cursor, reason, run.op.undo_message.clone()).await;
    }
    if run.op.cancel_requested {
        return start_undo(run, cursor, undo::Reason::Cancelled, None).await;
    }
    if let Some(message) = run.attempts_exhausted() {
        return start_undo(run, cursor, undo::Reason::Failed, Some(message)).await;
    }
    match import_rows(run, params, cursor).await {
        Err(err) if run.is_undoing() => Err(err),
        Err(err) => match run.final_failure(&err) {
            Some(message) => {
                let committed: ImportCursor = run.committed_cursor().await;
                start_undo(run, committed, undo::Reason::Failed, Some(message)).await
            }
            None => Err(err),
        },
        done => done,
    }
}

async fn import_rows(
    run: &Run<'_>,
    params: Parameters,
    mut cursor: ImportCursor,
) -> Result<Outcome, RunError> {
    let Parameters::Import {
        blob,
        field_mapping,
        mode,
        on_error,
        date_format,
        size_bytes,
        ..
    } = params
    else {
        return Err(RunError::Failed {
            message: "not an import".into(),
            result: None,
        });
    };
    let dry_run = run.op.dry_run;
    let today = chrono::Utc::now().date_naive();
    // Opening, decrypting, parsing and the resume skip are blocking file work.
    let keyring = run.engine.keyring.clone();
    let file = open_upload(&run.engine.blobs, &blob).await?;
    let to_skip = cursor.records;
    let (source, seen) = blocking(move || {
        let mut source = open_source(&keyring, file, &blob, field_mapping.as_ref())?;
        // Skip what earlier attempts committed. The skipped rows are validated again
        // (without writing) so that `seen` holds exactly what an uninterrupted run has.
        let mut seen: HashSet<u64> = HashSet::new();
        let mut left = to_skip;
        while left > 0 {
            let batch = next_batch(&mut source, (left as usize).min(CHUNK_ROWS))?;
            if batch.is_empty() {
                break;
            }
            left -= batch.len() as i64;
            for record in batch {
                let _ = validate_row(record, &source, date_format, today, &mut seen);
            }
        }
        Ok((source, seen))
    })
    .await?;
    let mut chunks = 0u32;
    // Error reports name the file's own columns; the source itself moves to the
    // blocking pool with each read-ahead.
    let column_of = source.column_of.clone();

    // The next batch is read, decrypted and validated on the blocking pool while the
    // current chunk is written: the file work and the database work overlap. Reading
    // ahead commits nothing, so a crash or a cancel loses nothing by it.
    let mut ahead = read_ahead(source, seen, date_format, today);
    let source = loop {
        let (source, seen, batch) = ahead
            .await
            .map_err(|e| RunError::Transient(anyhow::anyhow!("import task: {e}")))??;
        if batch.records == 0 {
            break source;
        }
        ahead = read_ahead(source, seen, date_format, today);
        let ValidatedBatch {
            records,
            mut valid,
            row_errors,
            failed,
            bytes_read,
        } = batch;
        let last = records < CHUNK_ROWS as i64;
        let mut validated = cursor.clone();
        validated.records += records;
        validated.failed += failed;
        if !row_errors.is_empty() && on_error == OnError::Abort {
            validated.stopped_writing = true;
        }
        let total = Some(if last {
            validated.records
        } else {
            estimate_rows(validated.records, bytes_read, size_bytes)
        });
        // Planned against the patients as they are now; when one of them changes
        // before the commit (a version conflict), read them again and plan again.
        let (next, cancel_requested) = loop {
            let mut next = validated.clone();
            // Only an upsert writes existing patients, whose version can move on before
            // the commit (a conflict, planned again): the other modes can give the
            // rows away instead of copying them.
            let rows = if mode == ImportMode::Upsert {
                valid.clone()
            } else {
                std::mem::take(&mut valid)
            };
            let mut chunk = plan_chunk(run, rows, &column_of, mode, on_error, &mut next).await?;
            chunk.row_errors.splice(0..0, row_errors.iter().cloned());
            if dry_run || next.stopped_writing {
                chunk.inserts.clear();
                chunk.writes.clear();
            }
            chunk.processed = next.records;
            chunk.total = total;
            chunk.cursor = serde_json::to_string(&next).unwrap_or_default();
            match run.try_commit(chunk).await? {
                ChunkOutcome::Conflict(_) if mode == ImportMode::Upsert => continue,
                // Without writes there is no version to conflict on, and the rows were
                // given away: never plan the chunk again from nothing.
                ChunkOutcome::Conflict(_) => {
                    return Err(RunError::Transient(anyhow::anyhow!(
                        "an import chunk without updates reported a version conflict"
                    )))
                }
                ChunkOutcome::LeaseLost => return Err(RunError::LeaseLost),
                ChunkOutcome::Committed { cancel_requested } => break (next, cancel_requested),
            }
        };
        cursor = next;
        chunks += 1;
        if chunks == 2 && !dry_run {
            // Once, early: the lookup by UNHCR number must be planned on the index even
            // when the organization had few patients before this import.
            // Best effort: a concurrent ANALYZE (autovacuum) may hold the lock.
            if let Err(e) = run.engine.store.refresh_statistics().await {
                tracing::debug!(error = %e, "refreshing planner statistics skipped");
            }
        }
        if cancel_requested {
            return start_undo(run, cursor, undo::Reason::Cancelled, None).await;
        }
    };

    if cursor.failed > 0 && on_error == OnError::Abort {
        let message = format!(
            "{} rows are invalid and on_error is abort: nothing was imported; see the error report",
            cursor.failed
        );
        return start_undo(run, cursor, undo::Reason::Aborted, Some(message)).await;
    }
    Ok(Outcome::Completed {
        result: result_json(run, &cursor, &source.plan),
        output: None,
        rolled_back: None,
    })
}

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RunError> + Send + 'static,
) -> Result<T, RunError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RunError::Transient(anyhow::anyhow!("import task: {e}")))?
}

/// A batch of the file, validated: what a chunk is planned from.
struct ValidatedBatch {
    records: i64,
    valid: Vec<(i64, PatientFields, Vec<&'static str>)>,
    row_errors: Vec<RowError>,
    failed: i64,
    /// Bytes of the file read after this batch (for the estimated total).
    bytes_read: u64,
}

type ReadAhead = tokio::task::JoinHandle<Result<(Source, HashSet<u64>, ValidatedBatch), RunError>>;

/// Reads and validates the next batch on the blocking pool; `records == 0` at the end
/// of the file. Validation is in file order (`seen` finds duplicates within the file).
fn read_ahead(
    mut source: Source,
    mut seen: HashSet<u64>,
    date_format: DateFormat,
    today: chrono::NaiveDate,
) -> ReadAhead {
    tokio::task::spawn_blocking(move || {
        let batch = next_batch(&mut source, CHUNK_ROWS)?;
        let mut validated = ValidatedBatch {
            records: batch.len() as i64,
            valid: Vec::with_capacity(batch.len()),
            row_errors: Vec::new(),
            failed: 0,
            bytes_read: 0,
        };
        for record in batch {
            let row = record.row;
            match validate_row(record, &source, date_format, today, &mut seen) {
                Ok((fields, present)) => validated.valid.push((row, fields, present)),
                Err(errors) => {
                    validated.failed += 1;
                    validated.row_errors.extend(errors);
                }
            }
        }
        validated.bytes_read = source.reader.bytes_read();
        Ok((source, seen, validated))
    })
}

/// Turns a chunk's valid rows into inserts and writes against the patients of the
/// organization as they are now, counting into `cursor`.
async fn plan_chunk(
    run: &Run<'_>,
    valid: Vec<(i64, PatientFields, Vec<&'static str>)>,
    column_of: &HashMap<&'static str, String>,
    mode: ImportMode,
    on_error: OnError,
    cursor: &mut ImportCursor,
) -> Result<Chunk, RunError> {
    let org = run.op.organization_id;
    let today = chrono::Utc::now().date_naive();
    let mut chunk = Chunk::default();
    let numbers: Vec<String> = valid
        .iter()
        .filter_map(|(_, f, _)| f.unhcr_number.clone())
        .collect();
    let existing: HashMap<String, Patient> = run
        .engine
        .store
        .patients_by_unhcr(org, &numbers)
        .await?
        .into_iter()
        .filter_map(|p| p.fields.unhcr_number.clone().map(|n| (n, p)))
        .collect();
    let at = now();
    chunk.inserts.reserve(valid.len());
    for (row, fields, present) in valid {
        let current = fields.unhcr_number.as_ref().and_then(|n| existing.get(n));
        match (current, mode) {
            (None, _) => {
                cursor.imported += 1;
                chunk.inserts.push(Patient {
                    id: new_id(),
                    organization_id: org,
                    fields,
                    created_at: at,
                    updated_at: at,
                    version: 1,
                    deleted_at: None,
                    import_operation_id: Some(run.op.id),
                });
            }
            (Some(_), ImportMode::Create) => {
                cursor.failed += 1;
                chunk.row_errors.push(RowError {
                    row,
                    column: column_of.get("unhcr_number").cloned().unwrap_or_else(|| "unhcr_number".into()),
                    code: "duplicate".into(),
                    message: "a patient of your organization already has this unhcr_number (use mode upsert or skip_existing)".into(),
                });
                if on_error == OnError::Abort {
                    cursor.stopped_writing = true;
                }
            }
            (Some(_), ImportMode::SkipExisting) => cursor.skipped += 1,
            (Some(existing), ImportMode::Upsert) => {
                cursor.updated += 1;
                // Cells left empty in the file keep the stored value.
                let mut merged = existing.fields.clone();
                for field in &present {
                    if let Some(value) = fields.get_json(field) {
                        let raw = RawValue::from_json(&value).unwrap_or(RawValue::Null);
                        let _ = merged.set(field, raw, DateFormat::Iso, today);
                    }
                }
                let image = BeforeImage::of_change(existing, &merged);
                chunk.writes.push(PatientWrite {
                    patient_id: existing.id,
                    expected_version: existing.version,
                    fields: merged,
                    deleted_at: None,
                    backup: Some(run.seal_backup(run.op.id, existing.id, &image)),
                });
            }
        }
    }
    Ok(chunk)
}

/// The rows of the whole file, extrapolated from the share of its bytes read so far.
fn estimate_rows(records: i64, bytes_read: u64, size_bytes: u64) -> i64 {
    if bytes_read == 0 || size_bytes <= bytes_read {
        return records;
    }
    let estimate = records as f64 * size_bytes as f64 / bytes_read as f64;
    (estimate.round() as i64).max(records)
}

fn validate_row(
    record: Record,
    source: &Source,
    date_format: DateFormat,
    today: chrono::NaiveDate,
    seen: &mut HashSet<u64>,
) -> Result<(PatientFields, Vec<&'static str>), Vec<RowError>> {
    let column = |field: &str| {
        source
            .column_of
            .get(field)
            .cloned()
            .unwrap_or_else(|| field.to_string())
    };
    let mut fields = PatientFields::new_draft();
    let mut errors = Vec::new();
    let mut present = Vec::new();
    // Each cell's value moves into the patient: no copy of the cell.
    for (field, raw) in record.values {
        if raw != RawValue::Null {
            present.push(field);
        }
        if let Err(e) = fields.set(field, raw, date_format, today) {
            errors.push(RowError {
                row: record.row,
                column: column(field),
                code: e.code,
                message: e.message,
            });
        }
    }
    for e in fields.check_complete() {
        if !errors.iter().any(|x| x.column == column(&e.field)) {
            errors.push(RowError {
                row: record.row,
                column: column(&e.field),
                code: e.code,
                message: e.message,
            });
        }
    }
    if errors.is_empty() {
        if let Some(number) = &fields.unhcr_number {
            if !seen.insert(unhcr_key(number)) {
                errors.push(RowError {
                    row: record.row,
                    column: column("unhcr_number"),
                    code: "duplicate".into(),
                    message: "this unhcr_number appears on an earlier row of the file".into(),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok((fields, present))
    } else {
        Err(errors)
    }
}

fn result_json(run: &Run<'_>, cursor: &ImportCursor, plan: &ColumnPlan) -> Value {
    let duration_ms = run.elapsed_ms();
    let rows_per_second = if duration_ms > 0 {
        (cursor.records as f64 * 1000.0 / duration_ms as f64).round()
    } else {
        cursor.records as f64
    };
    json!({
        "rows_total": cursor.records,
        "rows_imported": cursor.imported,
        "rows_updated": cursor.updated,
        "rows_skipped": cursor.skipped,
        "rows_failed": cursor.failed,
        "columns_ignored": plan.ignored,
        "duration_ms": duration_ms,
        "rows_per_second": rows_per_second,
        "dry_run": run.op.dry_run,
    })
}

/// Begins undoing this import's partial changes (its progress is saved, so a crash
/// during the undo resumes it).
async fn start_undo(
    run: &Run<'_>,
    mut cursor: ImportCursor,
    reason: undo::Reason,
    message: Option<String>,
) -> Result<Outcome, RunError> {
    let mut state = undo::UndoCursor::new(reason);
    state.message = message;
    cursor.undo = Some(state.clone());
    finish_undo(run, cursor, state).await
}

async fn finish_undo(
    run: &Run<'_>,
    cursor: ImportCursor,
    state: undo::UndoCursor,
) -> Result<Outcome, RunError> {
    let reason = state.reason;
    run.begin_undo(reason.as_str(), state.message.clone());
    let wrap = {
        let cursor = cursor.clone();
        move |undo_state: &undo::UndoCursor| {
            let mut c = cursor.clone();
            c.undo = Some(undo_state.clone());
            serde_json::to_string(&c).unwrap_or_default()
        }
    };
    // Not forced: a patient someone edited meanwhile keeps the edit and is listed.
    let done = undo::undo_operation(run, run.op.id, false, state, &wrap).await?;
    let (conflicts, conflicts_total) = undo::conflicts_json(run).await?;
    // Everything written was undone: nothing counts as imported or updated.
    let result = json!({
        "rows_total": cursor.records,
        "rows_imported": 0,
        "rows_updated": 0,
        "rows_skipped": cursor.skipped,
        "rows_failed": cursor.failed,
        "columns_ignored": [],
        "duration_ms": run.elapsed_ms(),
        "rows_per_second": 0,
        "dry_run": run.op.dry_run,
        "conflicts": conflicts,
        "conflicts_total": conflicts_total,
    });
    Ok(undo::ending(reason, done.message.clone(), result))
}
