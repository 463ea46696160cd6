//! Export runner: streams patients page by page into the format encoder, through the
//! encryption, into a file in the blob store. Memory holds one page, whatever the size.
//! A resumed export starts over in a file of its own attempt: it changes nothing, so
//! repeating is safe, and a stale attempt that wakes up later writes only its own file,
//! which is never published (the completion that names the file is fenced).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::{Outcome, Run, RunError};
use crate::blobs::{BlobStore, BlockingBlobWriter};
use crate::crypto::EncryptedWriter;
use crate::domain::now;
use crate::domain::operation::Parameters;
use crate::formats::export::{new_writer, ExportFormat};
use crate::store::ops::{Chunk, PatientScan};
use crate::store::Page;

const EXPORT_PAGE: i64 = 1_000;

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
    let mut encoder = encoder;
    let mut after = None;
    let mut exported = 0i64;
    loop {
        let page = engine.store.scan_patients(scan(after)).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        exported += page.len() as i64;
        let page_sink = sink.clone();
        encoder = tokio::task::spawn_blocking(move || -> Result<_, RunError> {
            for patient in &page {
                encoder
                    .write_patient(patient)
                    .map_err(|e| page_sink.error(e))?;
            }
            Ok(encoder)
        })
        .await
        .map_err(|e| RunError::Transient(anyhow::anyhow!("export task: {e}")))??;
        let chunk = Chunk {
            processed: exported,
            total: Some(total),
            cursor: String::new(),
            ..Default::default()
        };
        if run.commit(chunk).await? {
            return Ok(None);
        }
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
