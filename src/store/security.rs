//! Storage for the protections of issue 8, in a trait of its own so that it stays apart
//! from the engine's queue code: login attempts counted before the password is checked,
//! the owner of an id (to audit cross-organization probes) and the SQLite WAL checkpoint.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::StoreResult;

/// The answer to a login attempt before its password is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum LoginGate {
    /// Counted as a failure until [`SecurityStore::forget_login_attempt`] takes it back.
    Admitted,
    /// A key is at its limit; the oldest failure counted for it is from `oldest`.
    Throttled { oldest: Option<DateTime<Utc>> },
}

/// One throttling key of a login attempt and how many failures it may have.
#[derive(Debug, Clone)]
pub struct ThrottleKey {
    pub key: String,
    pub limit: i64,
}

#[async_trait]
pub trait SecurityStore: Send + Sync {
    /// Checks every key against its limit and, when none is reached, records the attempt
    /// as a failure of each key, all in one transaction serialized per key: parallel
    /// attempts cannot all pass the check before any is recorded.
    async fn begin_login_attempt(
        &self,
        keys: &[ThrottleKey],
        attempt_id: Uuid,
        at: DateTime<Utc>,
        window_start: DateTime<Utc>,
    ) -> StoreResult<LoginGate>;
    /// Takes back the failures recorded by an attempt that succeeded.
    async fn forget_login_attempt(&self, attempt_id: Uuid) -> StoreResult<()>;
    /// The organization that owns a patient or an operation with this id, and which of
    /// the two it is; used only to audit requests for another organization's ids.
    async fn owner_of(&self, id: Uuid) -> StoreResult<Option<(&'static str, Uuid)>>;
    /// SQLite: copies the write-ahead log into the database file and truncates it to
    /// zero bytes, so that values deleted or replaced do not linger there in plaintext
    /// (deleted content in the database file itself is zeroed by `secure_delete`).
    /// Returns whether the log was emptied. PostgreSQL: nothing to do (true).
    async fn checkpoint_wal(&self) -> StoreResult<bool>;
}

/// Expands [`SecurityStore`] for one backend; `$key_lock` is the statement that
/// serializes attempts on one throttling key (`$1`), or `""` where the transaction
/// already holds the database's single write lock (SQLite).
macro_rules! security_store_impl {
    ($store:ty, $backend:literal, $key_lock:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::security::SecurityStore for $store {
            async fn begin_login_attempt(
                &self,
                keys: &[$crate::store::security::ThrottleKey],
                attempt_id: uuid::Uuid,
                at: chrono::DateTime<chrono::Utc>,
                window_start: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<$crate::store::security::LoginGate> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                let mut sorted: Vec<&$crate::store::security::ThrottleKey> = keys.iter().collect();
                sorted.sort_by(|a, b| a.key.cmp(&b.key));
                if !$key_lock.is_empty() {
                    for k in &sorted {
                        sqlx::query($key_lock).bind(&k.key).execute(&mut *tx).await?;
                    }
                }
                for k in &sorted {
                    let (count, oldest): (i64, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
                        "SELECT COUNT(*), MIN(failed_at) FROM login_failures WHERE throttle_key = $1 AND failed_at > $2",
                    )
                    .bind(&k.key)
                    .bind(window_start)
                    .fetch_one(&mut *tx)
                    .await?;
                    if count >= k.limit {
                        tx.rollback().await?;
                        return Ok($crate::store::security::LoginGate::Throttled { oldest });
                    }
                }
                for k in &sorted {
                    sqlx::query(
                        "INSERT INTO login_failures (throttle_key, failed_at, attempt_id) VALUES ($1, $2, $3)",
                    )
                    .bind(&k.key)
                    .bind(at)
                    .bind(attempt_id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok($crate::store::security::LoginGate::Admitted)
            }

            async fn forget_login_attempt(&self, attempt_id: uuid::Uuid) -> $crate::store::StoreResult<()> {
                sqlx::query("DELETE FROM login_failures WHERE attempt_id = $1")
                    .bind(attempt_id)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn owner_of(
                &self,
                id: uuid::Uuid,
            ) -> $crate::store::StoreResult<Option<(&'static str, uuid::Uuid)>> {
                for (kind, table) in [("patient", "patients"), ("bulk_operation", "bulk_operations")] {
                    let sql = format!("SELECT organization_id FROM {table} WHERE id = $1");
                    let owner: Option<(uuid::Uuid,)> = sqlx::query_as(&sql)
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await?;
                    if let Some((org,)) = owner {
                        return Ok(Some((kind, org)));
                    }
                }
                Ok(None)
            }

            async fn checkpoint_wal(&self) -> $crate::store::StoreResult<bool> {
                if $backend != "sqlite" {
                    return Ok(true);
                }
                // (busy, log frames, frames checkpointed): busy = 1 when a reader kept
                // the log from being emptied; the next checkpoint tries again.
                let (busy, _, _): (i64, i64, i64) =
                    sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                        .fetch_one(self.writer())
                        .await?;
                Ok(busy == 0)
            }
        }
    };
}
