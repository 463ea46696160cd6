//! The periodic cleanup (SPEC 9): removes what has outlived its retention. Expired export
//! files, before-images past `--backup-retention`, and patients soft-deleted longer ago
//! than the same retention (after which their deletion can no longer be rolled back).
//! Audit entries are never touched. Every step is idempotent, so several processes may
//! run it at once.

use serde::Serialize;

use super::Engine;
use crate::domain::now;

/// What one cleanup pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    pub export_files: u64,
    pub upload_files: u64,
    pub backups: u64,
    pub deleted_patients: u64,
    pub operations: u64,
    pub events: u64,
}

/// Finished operations are kept this long (SPEC 9); audit entries forever.
const OPERATION_RETENTION_DAYS: i64 = 90;
/// Operation events (the notification outbox, WebSocket replay) and in-app
/// notifications are kept this long.
const EVENT_RETENTION_DAYS: i64 = 30;

impl Engine {
    /// One cleanup pass.
    pub async fn cleanup_once(&self) -> anyhow::Result<CleanupReport> {
        let at = now();
        let retention = chrono::Duration::from_std(self.settings.backup_retention)?;
        let mut report = CleanupReport::default();
        for (operation_id, blob) in self.store.expired_exports(at).await? {
            self.blobs.remove(&blob).await;
            self.store.clear_output(operation_id).await?;
            report.export_files += 1;
        }
        report.upload_files = self.purge_uploads().await?;
        report.backups = self.store.purge_backups(at - retention).await?;
        report.deleted_patients = self.store.purge_deleted_patients(at - retention).await?;
        report.operations = self
            .store
            .purge_finished_operations(at - chrono::Duration::days(OPERATION_RETENTION_DAYS))
            .await?;
        report.events = self
            .store
            .purge_events(at - chrono::Duration::days(EVENT_RETENTION_DAYS))
            .await?;
        if report != CleanupReport::default() {
            tracing::info!(?report, "cleanup removed data past its retention");
        }
        Ok(report)
    }

    /// Removes uploaded files no operation will read again: their import has ended, or
    /// no operation exists (an upload refused or cut off). Files younger than an hour
    /// are left alone (`upload_grace`): their upload may still be under way.
    async fn purge_uploads(&self) -> anyhow::Result<u64> {
        let mut removed = 0;
        for entry in self.blobs.list("uploads").await? {
            let young = entry
                .modified
                .map(|t| t.elapsed().unwrap_or_default() < self.settings.upload_grace)
                .unwrap_or(true);
            let id = entry
                .file_name
                .split('.')
                .next()
                .and_then(|s| uuid::Uuid::parse_str(s).ok());
            let Some(id) = id.filter(|_| !young) else {
                continue;
            };
            let ended = match self.store.operation_status(id).await? {
                None => true,
                Some(status) => status.is_final(),
            };
            if ended
                && self
                    .blobs
                    .remove(&format!("uploads/{}", entry.file_name))
                    .await
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Runs the cleanup now and then every `--cleanup-interval` until shutdown.
    pub async fn run_cleanup(
        self: std::sync::Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        // One run per `--cleanup-interval` among all processes: whichever claims the
        // internal job runs it; the others find it claimed.
        loop {
            let at = now();
            let next = at
                + chrono::Duration::from_std(self.settings.cleanup_interval)
                    .unwrap_or(chrono::Duration::days(1));
            match self
                .store
                .claim_internal_job("cleanup", &self.worker_id, at, next)
                .await
            {
                Ok(true) => {
                    if let Err(e) = self.cleanup_once().await {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "cleanup failed; trying again next time"
                        );
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "claiming the cleanup failed"),
            }
            let wait = self
                .settings
                .cleanup_interval
                .min(std::time::Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
