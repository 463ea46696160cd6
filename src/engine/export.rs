//! Export runner: streams patients page by page into the format encoder, through the
//! encryption, into a file in the blob store. Memory holds one page, whatever the size.
//! A resumed export starts its file over: it changes nothing, so repeating is safe.

use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::{Outcome, Run, RunError};
use crate::blobs::BlobStore;
use crate::crypto::EncryptedWriter;
use crate::domain::now;
use crate::domain::operation::Parameters;
use crate::formats::export::new_writer;
use crate::store::ops::{Chunk, PatientScan};
use crate::store::Page;

const EXPORT_PAGE: i64 = 1_000;

type Sink = EncryptedWriter<BufWriter<std::fs::File>>;

/// Lets the format encoder own a writer while the runner keeps the encrypted file, so
/// that the final encrypted segment can be written after the encoder finishes.
#[derive(Clone)]
struct SharedSink {
    inner: Arc<Mutex<Option<Sink>>>,
    plaintext_bytes: Arc<AtomicU64>,
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
        let n = sink.write(buf)?;
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
    let total = engine.store.count_patients(scan(None)).await?;
    if run.op.dry_run {
        return Ok(Outcome::Completed {
            result: json!({"rows_exported": total, "format": format.as_str(), "bytes": 0,
                "download_url": null, "expires_at": null, "duration_ms": run.elapsed_ms(), "dry_run": true}),
            output: None,
        });
    }

    let name = BlobStore::export_name(run.op.id, format.extension());
    let partial = engine.blobs.partial_path(&name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode_0600()
        .open(&partial)?;
    let sink = SharedSink {
        inner: Arc::new(Mutex::new(Some(
            engine
                .keyring
                .encrypted_writer(BufWriter::new(file), &BlobStore::aad(&name)),
        ))),
        plaintext_bytes: Arc::new(AtomicU64::new(0)),
    };
    let mut encoder = new_writer(format, fields, sink.clone()).map_err(encoder_error)?;
    let mut after = None;
    let mut exported = 0i64;
    loop {
        let page = engine.store.scan_patients(scan(after)).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for patient in &page {
            encoder.write_patient(patient).map_err(encoder_error)?;
        }
        exported += page.len() as i64;
        let chunk = Chunk {
            processed: exported,
            total: Some(total),
            cursor: String::new(),
            ..Default::default()
        };
        if run.commit(chunk).await? {
            drop(encoder);
            engine.blobs.remove(&name);
            return Ok(Outcome::Cancelled {
                result: json!({"rows_exported": 0, "format": format.as_str(), "bytes": 0}),
                note: Some("cancelled while running; the partial file was deleted".into()),
            });
        }
    }
    encoder.finish().map_err(encoder_error)?;
    let finished = sink
        .inner
        .lock()
        .map_err(|_| RunError::Transient(anyhow::anyhow!("export writer poisoned")))?
        .take()
        .ok_or_else(|| RunError::Transient(anyhow::anyhow!("export writer closed twice")))?;
    let buffered = finished.finish()?;
    let file = buffered.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&partial, engine.blobs.path(&name))?;

    let expires_at = now()
        + chrono::Duration::from_std(engine.settings.export_retention)
            .unwrap_or(chrono::Duration::days(7));
    Ok(Outcome::Completed {
        result: json!({
            "rows_exported": exported,
            "format": format.as_str(),
            "bytes": sink.plaintext_bytes.load(Ordering::Relaxed),
            "download_url": format!("/api/v2/bulk-operations/{}/download", run.op.id),
            "expires_at": crate::domain::rfc3339(&expires_at),
            "duration_ms": run.elapsed_ms(),
        }),
        output: Some((name, expires_at)),
    })
}

/// Files holding patient data are readable by their owner only.
trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}
