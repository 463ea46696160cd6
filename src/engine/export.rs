//! Export runner: streams patients from one query into the format encoder, through the
//! encryption, into a file in the blob store. Memory holds a few pages, whatever the size.
//! A resumed export starts over in a file of its own attempt: it changes nothing, so
//! repeating is safe, and a stale attempt that wakes up later writes only its own file,
//! which is never published (the completion that names the file is fenced).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Outcome, Run, RunError};
use crate::blobs::{BlobStore, BlockingBlobWriter};
use crate::crypto::EncryptedWriter;
use crate::domain::now;
use crate::domain::operation::Parameters;
use crate::domain::patient::{Patient, SYSTEM_FIELDS, WRITABLE_FIELDS};
use crate::formats::export::{new_writer, ExportFormat};
use crate::store::ops::{Chunk, PatientScan};
use crate::store::Page;

/// Rows handed from the database to the encoder at a time.
const EXPORT_PAGE: i64 = 1_000;
/// Progress is committed this long after the last commit...
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// ...or this many rows after it, whichever comes first.
const PROGRESS_ROWS: i64 = 10_000;

type Sink = EncryptedWriter<BlockingBlobWriter>;

/// Lets the format encoder own a writer while the runner keeps the encrypted file, so
/// that the final encrypted segment can be written after the encoder finishes.
#[derive(Clone)]
struct SharedSink {
    inner: Arc<Mutex<Option<Sink>>>,
    plaintext_bytes: Arc<AtomicU64>,
    /// Set when writing to the blob store failed (a full disk, object storage away):
    /// an outage worth retrying, unlike an encoder's refusal.
    store_failed: Arc<AtomicBool>,
}

impl SharedSink {
    /// What an error of the encoder (which writes through this sink) means.
    fn error(&self, err: std::io::Error) -> RunError {
        if self.store_failed.load(Ordering::Relaxed)
            && err.kind() != std::io::ErrorKind::InvalidData
        {
            RunError::Transient(anyhow::Error::new(err).context("writing the export file"))
        } else {
            encoder_error(err)
        }
    }
}

impl Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| std::io::Error::other("export writer poisoned"))?;
        let sink = guard
            .as_mut()
            .ok_or_else(|| std::io::Error::other("export writer closed"))?;
        let n = sink.write(buf).inspect_err(|_| {
            self.store_failed.store(true, Ordering::Relaxed);
        })?;
        self.plaintext_bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.inner.lock() {
            Ok(mut guard) => guard.as_mut().map(|s| s.flush()).unwrap_or(Ok(())),
            Err(_) => Err(std::io::Error::other("export writer poisoned")),
        }
    }
}

/// Encoder errors (too many rows for XLSX...) are not worth retrying.
fn encoder_error(err: std::io::Error) -> RunError {
    match err.kind() {
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Other => RunError::Failed {
            message: format!("the export could not be written: {err}"),
            result: None,
        },
        _ => err.into(),
    }
}

pub async fn run(run: &Run<'_>, params: Parameters) -> Result<Outcome, RunError> {
    let Parameters::Export {
        format,
        fields,
        filters,
        include_deleted,
    } = params
    else {
        return Err(RunError::Failed {
            message: "not an export".into(),
            result: None,
        });
    };
    let engine = run.engine;
    let org = run.op.organization_id;
    let scan = |after| PatientScan {
        org,
        filters: &filters,
        include_deleted,
        imported_by: None,
        page: Page {
            after,
            limit: EXPORT_PAGE,
        },
    };
    if run.op.cancel_requested {
        // A cancel that arrived after the last page: nothing is published.
        return Ok(cancelled(format));
    }
    let total = engine.store.count_patients(scan(None)).await?;
    if run.op.dry_run {
        return Ok(Outcome::Completed {
            result: json!({"rows_exported": total, "format": format.as_str(), "bytes": 0,
                "download_url": null, "expires_at": null, "duration_ms": run.elapsed_ms(), "dry_run": true}),
            output: None,
            rolled_back: None,
        });
    }

    let name = BlobStore::export_name(run.op.id, run.op.attempt, format.extension());
    match write_export(run, &name, format, fields, &scan, total).await {
        Ok(Some((plaintext_bytes, exported))) => {
            let expires_at = now()
                + chrono::Duration::from_std(engine.settings.export_retention)
                    .unwrap_or(chrono::Duration::days(7));
            Ok(Outcome::Completed {
                result: json!({
                    "rows_exported": exported,
                    "format": format.as_str(),
                    "bytes": plaintext_bytes,
                    "download_url": format!("/api/v2/bulk-operations/{}/download", run.op.id),
                    "expires_at": crate::domain::rfc3339(&expires_at),
                    "duration_ms": run.elapsed_ms(),
                }),
                output: Some((name, expires_at)),
                rolled_back: None,
            })
        }
        Ok(None) => {
            engine.blobs.remove(&name).await;
            Ok(cancelled(format))
        }
        Err(e) => {
            // Nobody will publish this attempt's file.
            engine.blobs.remove(&name).await;
            Err(e)
        }
    }
}

fn cancelled(format: ExportFormat) -> Outcome {
    Outcome::Cancelled {
        result: json!({"rows_exported": 0, "format": format.as_str(), "bytes": 0}),
        note: Some("cancelled while running; the partial file was deleted".into()),
    }
}

/// Writes the whole file of this attempt: its plaintext bytes and rows, or `None`
/// when a cancel was requested. The encoding, encryption and file writes run on the
/// blocking pool, a page at a time.
async fn write_export<'f>(
    run: &Run<'_>,
    name: &str,
    format: ExportFormat,
    fields: Vec<String>,
    scan: &(dyn Fn(Option<uuid::Uuid>) -> PatientScan<'f> + Sync),
    total: i64,
) -> Result<Option<(u64, i64)>, RunError> {
    let engine = run.engine;
    let file = engine.blobs.create_blocking(name).await?;
    let keyring = engine.keyring.clone();
    let aad = BlobStore::aad(name);
    // NDJSON's FHIR resources use every field; the other formats the requested ones.
    let columns: Vec<String> = if format == ExportFormat::Ndjson {
        SYSTEM_FIELDS
            .iter()
            .chain(WRITABLE_FIELDS.iter())
            .map(|f| f.to_string())
            .collect()
    } else {
        fields.clone()
    };
    let (sink, encoder) = tokio::task::spawn_blocking(move || -> Result<_, RunError> {
        let sink = SharedSink {
            inner: Arc::new(Mutex::new(Some(keyring.encrypted_writer(file, &aad)))),
            plaintext_bytes: Arc::new(AtomicU64::new(0)),
            store_failed: Arc::new(AtomicBool::new(false)),
        };
        let encoder = new_writer(format, fields, sink.clone()).map_err(|e| sink.error(e))?;
        Ok((sink, encoder))
    })
    .await
    .map_err(|e| RunError::Transient(anyhow::anyhow!("export task: {e}")))??;
    // Encoding, encryption and file writes run on a blocking thread while the next
    // rows arrive from the database.
    let (to_encoder, mut pages) = tokio::sync::mpsc::channel::<Vec<Patient>>(2);
    let page_sink = sink.clone();
    let encoding = tokio::task::spawn_blocking(move || -> Result<_, RunError> {
        let mut encoder = encoder;
        while let Some(page) = pages.blocking_recv() {
            for patient in &page {
                encoder
                    .write_patient(patient)
                    .map_err(|e| page_sink.error(e))?;
            }
        }
        Ok(encoder)
    });
    let scan = scan(None);
    let mut rows = engine.store.stream_patients(
        scan.org,
        scan.filters.clone(),
        scan.include_deleted,
        &columns,
        EXPORT_PAGE as usize,
    );
    let mut exported = 0i64;
    let mut committed_at = (Instant::now(), 0i64);
    let mut cancelled = false;
    while let Some(page) = rows.recv().await {
        let page = page?;
        exported += page.len() as i64;
        if to_encoder.send(page).await.is_err() {
            // The encoder stopped on an error, which its join below returns.
            break;
        }
        // Progress (and the cancel check) once a second or PROGRESS_ROWS rows after
        // the last, whichever comes first, not per page: an export changes nothing, so
        // nothing must be atomic with its progress, and each commit is a write
        // transaction.
        if committed_at.0.elapsed() >= PROGRESS_EVERY || exported - committed_at.1 >= PROGRESS_ROWS
        {
            if run.commit(progress(exported, total)).await? {
                cancelled = true;
                break;
            }
            committed_at = (Instant::now(), exported);
        }
    }
    drop(rows);
    drop(to_encoder);
    let encoder = encoding
        .await
        .map_err(|e| RunError::Transient(anyhow::anyhow!("export task: {e}")))??;
    if cancelled {
        return Ok(None);
    }
    if exported > committed_at.1 && run.commit(progress(exported, total)).await? {
        return Ok(None);
    }
    let plaintext = sink.plaintext_bytes.clone();
    tokio::task::spawn_blocking(move || -> Result<(), RunError> {
        encoder.finish().map_err(|e| sink.error(e))?;
        let finished = sink
            .inner
            .lock()
            .map_err(|_| RunError::Transient(anyhow::anyhow!("export writer poisoned")))?
            .take()
            .ok_or_else(|| RunError::Transient(anyhow::anyhow!("export writer closed twice")))?;
        finished.finish()?.commit()?;
        Ok(())
    })
    .await
    .map_err(|e| RunError::Transient(anyhow::anyhow!("export task: {e}")))??;
    Ok(Some((plaintext.load(Ordering::Relaxed), exported)))
}

/// A chunk that commits only the export's progress (an export writes nothing else).
fn progress(exported: i64, total: i64) -> Chunk {
    Chunk {
        processed: exported,
        total: Some(total),
        cursor: String::new(),
        ..Default::default()
    }
}
