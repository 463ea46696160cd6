//! Blobs in S3-compatible object storage, through the `object_store` crate.
//!
//! Writes go through `object_store`'s buffered writer: a blob smaller than one part is
//! one PUT, a larger one a multipart upload of [`PART_SIZE`] parts with at most
//! [`PARTS_IN_FLIGHT`] uploading at once, so memory stays at a few parts whatever the
//! size. Reads fetch [`READ_WINDOW`] bytes at a time with ranged GETs: each request
//! ends quickly whatever pace the consumer reads at (a slow import or a slow
//! download), so the client's request timeout never cuts a long read short.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::buffered::{BufReader, BufWriter};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;
use tokio::io::AsyncWrite;

use super::BlobEntry;

/// Bytes of one part of a multipart upload (S3 wants at least 5 MiB but the last).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once for one blob.
const PARTS_IN_FLIGHT: usize = 2;
/// Bytes fetched by one ranged GET when reading.
const READ_WINDOW: usize = 4 * 1024 * 1024;

/// A bucket (and a prefix in it) holding the blobs.
#[derive(Clone)]
pub(super) struct S3Blobs {
    store: Arc<dyn ObjectStore>,
    url: String,
}

impl std::fmt::Debug for S3Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Blobs").field("url", &self.url).finish()
    }
}

impl S3Blobs {
    /// `s3://bucket/prefix`: the bucket from the URL; endpoint, region and credentials
    /// from `AWS_*` variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, …). An `http://` endpoint is allowed as given (a
    /// local MinIO or a test server); `AWS_ALLOW_HTTP=true` says so too.
    pub(super) fn from_url(url: &str) -> anyhow::Result<S3Blobs> {
        let parsed = url::Url::parse(url).with_context(|| format!("--blob-store {url}"))?;
        let bucket = parsed.host_str().unwrap_or_default();
        if parsed.scheme() != "s3" || bucket.is_empty() {
            anyhow::bail!("--blob-store {url}: expected a directory or s3://bucket/prefix");
        }
        let prefix = parsed.path().trim_matches('/').to_string();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let http_endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .is_some_and(|e| e.starts_with("http://"));
        if http_endpoint {
            builder = builder.with_allow_http(true);
        }
        let s3 = builder
            .build()
            .with_context(|| format!("configuring the blob store {url}"))?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix.as_str()))
        };
        let url = format!("s3://{bucket}/{prefix}");
        Ok(S3Blobs { store, url })
    }

    /// Lists one page of `uploads/`: fails when the bucket is missing, unreachable or
    /// the credentials are refused.
    pub(super) async fn check(&self) -> object_store::Result<()> {
        let mut listing = self.store.list(Some(&Path::from("uploads")));
        listing.try_next().await.map(|_| ())
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    pub(super) fn writer(&self, name: &str) -> ObjectWriter {
        let writer = BufWriter::with_capacity(self.store.clone(), Path::from(name), PART_SIZE)
            .with_max_concurrency(PARTS_IN_FLIGHT);
        ObjectWriter {
            inner: Some(writer),
            closing: false,
        }
    }

    pub(super) async fn reader(&self, name: &str) -> io::Result<BufReader> {
        let meta = self.store.head(&Path::from(name)).await?;
        Ok(BufReader::with_capacity(
            self.store.clone(),
            &meta,
            READ_WINDOW,
        ))
    }

    pub(super) async fn remove(&self, name: &str) -> object_store::Result<()> {
        match self.store.delete(&Path::from(name)).await {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    pub(super) async fn list(&self, dir: &str) -> io::Result<Vec<BlobEntry>> {
        let objects: Vec<_> = self
            .store
            .list(Some(&Path::from(dir)))
            .try_collect()
            .await?;
        Ok(objects
            .into_iter()
            .filter_map(|meta| {
                Some(BlobEntry {
                    file_name: meta.location.filename()?.to_string(),
                    modified: Some(meta.last_modified.into()),
                })
            })
            .collect())
    }
}

/// Writes one object. Shut it down to complete the upload; dropped before that (an
/// error, a client that went away), it aborts its multipart upload in the background
/// so no parts are left behind in the bucket.
pub struct ObjectWriter {
    inner: Option<BufWriter>,
    /// Set once the shutdown began: past it, aborting is no longer possible.
    closing: bool,
}

fn closed() -> io::Error {
    io::Error::other("the blob writer is already closed")
}

impl AsyncWrite for ObjectWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.inner.as_mut() {
            Some(writer) if !this.closing => Pin::new(writer).poll_write(cx, buf),
            _ => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.inner.as_mut() {
            Some(writer) if !this.closing => Pin::new(writer).poll_flush(cx),
            _ => Poll::Ready(Err(closed())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.closing = true;
        match this.inner.as_mut() {
            Some(writer) => Pin::new(writer).poll_shutdown(cx),
            None => Poll::Ready(Err(closed())),
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if self.closing {
            return;
        }
        let (Some(mut writer), Ok(runtime)) =
            (self.inner.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = writer.abort().await {
                tracing::warn!(error = %e, "aborting an unfinished blob upload failed");
            }
        });
    }
}
