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
    pub backups: u64,
    pub deleted_patients: u64,
}

impl Engine {
    /// One cleanup pass.
    pub async fn cleanup_once(&self) -> anyhow::Result<CleanupReport> {
        let at = now();
        let retention = chrono::Duration::from_std(self.settings.backup_retention)?;
        let mut report = CleanupReport::default();
        for (operation_id, blob) in self.store.expired_exports(at).await? {
            self.blobs.remove(&blob);
            self.store.clear_output(operation_id).await?;
            report.export_files += 1;
        }
        report.backups = self.store.purge_backups(at - retention).await?;
        report.deleted_patients = self.store.purge_deleted_patients(at - retention).await?;
        if report != CleanupReport::default() {
            tracing::info!(?report, "cleanup removed data past its retention");
        }
        Ok(report)
    }

    /// Runs the cleanup now and then every `--cleanup-interval` until shutdown.
    pub async fn run_cleanup(
        self: std::sync::Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if let Err(e) = self.cleanup_once().await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cleanup failed; trying again next time"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.cleanup_interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
