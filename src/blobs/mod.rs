//! The blob store: encrypted uploads and exports, in a local directory (the default) or
//! in S3-compatible object storage (`--blob-store s3://bucket/prefix`) when processes
//! on several machines share the work. Every blob is encrypted with the master key
//! before it leaves the process; its name is bound in as associated data, so a blob
//! cannot be passed off as another. Blobs are written and read as streams in bounded
//! pieces: a 1 GB upload never sits in memory.

mod object;

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use uuid::Uuid;

pub use object::ObjectWriter;
use object::S3Blobs;

/// Where blobs live: files under a directory, or objects in a bucket.
#[derive(Debug, Clone)]
pub struct BlobStore {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Local(PathBuf),
    S3(S3Blobs),
}

/// One stored blob, as listed: its name and when it was last written.
#[derive(Debug, Clone)]
pub struct BlobEntry {
    /// The file name within its directory (`<operation id>.csv.enc`).
    pub file_name: String,
    /// `None` when the store cannot tell (the blob is then taken as young).
    pub modified: Option<SystemTime>,
}

/// A readable blob (ciphertext), for the async readers (downloads).
pub type BlobReader = Box<dyn AsyncRead + Send + Unpin>;

/// A readable blob (ciphertext) for blocking code (the import's CSV parser runs on
/// the blocking pool). Only read it from a blocking thread. `Sync` (through a mutex
/// that `&mut` access never locks) so that the import can hold it across awaits.
pub struct BlockingBlobReader(std::sync::Mutex<Box<dyn io::Read + Send>>);

impl BlockingBlobReader {
    fn new(reader: impl io::Read + Send + 'static) -> Self {
        BlockingBlobReader(std::sync::Mutex::new(Box::new(reader)))
    }
}

impl io::Read for BlockingBlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let reader = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        reader.read(buf)
    }
}

impl BlobStore {
    /// Blobs as files under `root` (the default: `<data-dir>/blobs`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        BlobStore {
            backend: Backend::Local(root.into()),
        }
    }

    /// Blobs as objects under `s3://bucket/prefix`; endpoint, region and credentials
    /// come from the usual `AWS_*` environment variables.
    pub fn s3(url: &str) -> anyhow::Result<Self> {
        Ok(BlobStore {
            backend: Backend::S3(S3Blobs::from_url(url)?),
        })
    }

    /// Where the blobs are, for messages: a directory or an `s3://` URL (no secrets).
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Local(root) => root.display().to_string(),
            Backend::S3(s3) => s3.url().to_string(),
        }
    }

    /// Creates the directories blobs go into, owner-only (0700), and narrows them to
    /// that when an earlier version created them open to others: the file names are
    /// operation ids, and nobody else has any business listing them. Object storage
    /// has no directories: nothing to do there.
    pub fn ensure_dirs(&self) -> io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let Backend::Local(root) = &self.backend else {
            return Ok(());
        };
        for dir in [root.clone(), root.join("uploads"), root.join("exports")] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    /// Checks at start that the store answers (the bucket exists and the credentials
    /// work), so that a mistake shows at once rather than on the first upload.
    pub async fn check(&self) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Local(_) => Ok(()),
            Backend::S3(s3) => s3
                .check()
                .await
                .map_err(|e| anyhow::anyhow!("the blob store {} does not answer: {e}", s3.url())),
        }
    }

    /// The blob name of an operation's uploaded file.
    pub fn upload_name(operation_id: Uuid) -> String {
        format!("uploads/{operation_id}.csv.enc")
    }

    /// The blob name of the export file written by one attempt of an operation. Each
    /// attempt writes its own file, so a stale worker that resumes after a takeover
    /// can never overwrite the file another attempt completed; only the file named in
    /// the fenced completion (`output_blob`) is ever served.
    pub fn export_name(operation_id: Uuid, attempt: i64, extension: &str) -> String {
        format!("exports/{operation_id}.a{attempt}.{extension}.enc")
    }

    /// The associated data binding a blob's ciphertext to its name.
    pub fn aad(name: &str) -> Vec<u8> {
        format!("haven-blob:{name}").into_bytes()
    }

    /// Starts writing blob `name` (replacing any blob of that name). Nothing is
    /// visible under the name in object storage until [`BlobWriter::commit`]; a
    /// writer dropped before it abandons its parts.
    pub async fn create(&self, name: &str) -> io::Result<BlobWriter> {
        Ok(match &self.backend {
            Backend::Local(root) => BlobWriter::Local(create_file(&root.join(name)).await?),
            Backend::S3(s3) => BlobWriter::S3(s3.writer(name)),
        })
    }

    /// A writer for blocking code (the export encoders run on the blocking pool):
    /// create it here, write and commit it from a blocking thread only.
    pub async fn create_blocking(&self, name: &str) -> io::Result<BlockingBlobWriter> {
        Ok(match &self.backend {
            Backend::Local(root) => {
                let file = create_file(&root.join(name)).await?;
                BlockingBlobWriter::Local(io::BufWriter::new(file.into_std().await))
            }
            Backend::S3(s3) => {
                BlockingBlobWriter::S3(Box::new(tokio_util::io::SyncIoBridge::new(s3.writer(name))))
            }
        })
    }

    /// Opens blob `name` for reading; a missing blob is `io::ErrorKind::NotFound`.
    pub async fn open(&self, name: &str) -> io::Result<BlobReader> {
        Ok(match &self.backend {
            Backend::Local(root) => Box::new(tokio::fs::File::open(root.join(name)).await?),
            Backend::S3(s3) => Box::new(s3.reader(name).await?),
        })
    }

    /// Opens blob `name` for a blocking reader (see [`BlockingBlobReader`]).
    pub async fn open_blocking(&self, name: &str) -> io::Result<BlockingBlobReader> {
        Ok(match &self.backend {
            Backend::Local(root) => {
                let file = tokio::fs::File::open(root.join(name)).await?;
                BlockingBlobReader::new(io::BufReader::new(file.into_std().await))
            }
            Backend::S3(s3) => {
                BlockingBlobReader::new(tokio_util::io::SyncIoBridge::new(s3.reader(name).await?))
            }
        })
    }

    /// Removes blob `name`; says whether it did (object storage cannot tell a blob
    /// already gone from one removed). Failures are logged (names are operation ids,
    /// never patient data) and left to the cleanup.
    pub async fn remove(&self, name: &str) -> bool {
        match &self.backend {
            Backend::Local(root) => tokio::fs::remove_file(root.join(name)).await.is_ok(),
            Backend::S3(s3) => match s3.remove(name).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(blob = name, error = %e, "removing a blob failed");
                    false
                }
            },
        }
    }

    /// The blobs in directory `dir` (`uploads` or `exports`).
    pub async fn list(&self, dir: &str) -> io::Result<Vec<BlobEntry>> {
        match &self.backend {
            Backend::Local(root) => {
                let mut entries = match tokio::fs::read_dir(root.join(dir)).await {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                };
                let mut out = Vec::new();
                while let Some(entry) = entries.next_entry().await? {
                    let Ok(file_name) = entry.file_name().into_string() else {
                        continue;
                    };
                    let modified = entry.metadata().await.and_then(|m| m.modified()).ok();
                    out.push(BlobEntry {
                        file_name,
                        modified,
                    });
                }
                Ok(out)
            }
            Backend::S3(s3) => s3.list(dir).await,
        }
    }

    /// Removes the export files of an operation's attempts except `keep` (the
    /// published one): what crashed or stale attempts left.
    pub async fn remove_exports_except(&self, operation_id: Uuid, keep: Option<&str>) {
        self.remove_exports_matching(&format!("{operation_id}.a"), keep)
            .await;
    }

    /// Removes the export file of one attempt (it lost its lease or was cancelled).
    pub async fn remove_export_attempt(&self, operation_id: Uuid, attempt: i64) {
        self.remove_exports_matching(&format!("{operation_id}.a{attempt}."), None)
            .await;
    }

    async fn remove_exports_matching(&self, prefix: &str, keep: Option<&str>) {
        let entries = match self.list("exports").await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "listing the export files failed");
                return;
            }
        };
        for entry in entries {
            let name = format!("exports/{}", entry.file_name);
            if entry.file_name.starts_with(prefix) && keep != Some(name.as_str()) {
                self.remove(&name).await;
            }
        }
    }
}

/// Creates (or truncates) a blob file, readable by its owner only: it holds patient
/// data, encrypted.
async fn create_file(path: &Path) -> io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .await
}

/// A blob being written (ciphertext goes in). Call [`BlobWriter::commit`]: a local
/// file is fsynced, an object completes its upload and only then exists.
pub enum BlobWriter {
    Local(tokio::fs::File),
    S3(ObjectWriter),
}

impl BlobWriter {
    /// Makes the blob durable and visible under its name.
    pub async fn commit(self) -> io::Result<()> {
        match self {
            BlobWriter::Local(mut file) => {
                file.flush().await?;
                file.sync_all().await
            }
            BlobWriter::S3(mut writer) => writer.shutdown().await,
        }
    }
}

impl AsyncWrite for BlobWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BlobWriter::Local(file) => Pin::new(file).poll_write(cx, buf),
            BlobWriter::S3(writer) => Pin::new(writer).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BlobWriter::Local(file) => Pin::new(file).poll_flush(cx),
            BlobWriter::S3(writer) => Pin::new(writer).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BlobWriter::Local(file) => Pin::new(file).poll_shutdown(cx),
            BlobWriter::S3(writer) => Pin::new(writer).poll_shutdown(cx),
        }
    }
}

/// A blob being written from blocking code (see [`BlobStore::create_blocking`]).
pub enum BlockingBlobWriter {
    Local(io::BufWriter<std::fs::File>),
    S3(Box<tokio_util::io::SyncIoBridge<ObjectWriter>>),
}

impl io::Write for BlockingBlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BlockingBlobWriter::Local(file) => file.write(buf),
            BlockingBlobWriter::S3(writer) => writer.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            BlockingBlobWriter::Local(file) => file.flush(),
            BlockingBlobWriter::S3(writer) => writer.flush(),
        }
    }
}

impl BlockingBlobWriter {
    /// Makes the blob durable and visible under its name (from a blocking thread).
    pub fn commit(self) -> io::Result<()> {
        match self {
            BlockingBlobWriter::Local(buffered) => {
                let file = buffered.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()
            }
            BlockingBlobWriter::S3(mut writer) => writer.shutdown(),
        }
    }
}
