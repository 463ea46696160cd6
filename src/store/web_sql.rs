//! Queries only the web UI needs: the organization's users (for "who" on the dashboard
//! and the users page) and the audit trail of one operation (its page). Expanded for
//! each backend by `web_store_impl!`, like the other shared SQL.

use async_trait::async_trait;
use uuid::Uuid;

use super::{AuditEntry, StoreResult, User};

/// Most entries shown on one operation's page (its trail is short: schedule, start,
/// completion, downloads, a cancel or a rollback).
pub const OPERATION_TRAIL_LIMIT: i64 = 500;

#[async_trait]
pub trait WebStore: Send + Sync {
    /// The organization's users by email (no password hashes).
    async fn list_users(&self, org: Uuid) -> StoreResult<Vec<User>>;
    /// The audit entries about one operation of the organization, oldest first.
    async fn operation_trail(&self, org: Uuid, operation_id: Uuid) -> StoreResult<Vec<AuditEntry>>;
    /// The organization's newest operation event: a page read after it asks the
    /// WebSocket for what happened since (`?after=`), so nothing falls between.
    async fn latest_event_id(&self, org: Uuid) -> StoreResult<Option<Uuid>>;
}

/// Implements [`WebStore`] for a backend that has `reader()` and `audit_from_row`.
macro_rules! web_store_impl {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::web_sql::WebStore for $store {
            async fn list_users(
                &self,
                org: uuid::Uuid,
            ) -> $crate::store::StoreResult<Vec<$crate::store::User>> {
                let rows = sqlx::query(
                    "SELECT id, organization_id, email, role, created_at FROM users \
                     WHERE organization_id = $1 ORDER BY email LIMIT 10000",
                )
                .bind(org)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(Self::user_from_row).collect()
            }

            async fn operation_trail(
                &self,
                org: uuid::Uuid,
                operation_id: uuid::Uuid,
            ) -> $crate::store::StoreResult<Vec<$crate::store::AuditEntry>> {
                let rows = sqlx::query(
                    "SELECT * FROM audit_events WHERE organization_id = $1 AND operation_id = $2 \
                     ORDER BY seq LIMIT $3",
                )
                .bind(org)
                .bind(operation_id)
                .bind($crate::store::web_sql::OPERATION_TRAIL_LIMIT)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(Self::audit_from_row).collect()
            }

            async fn latest_event_id(
                &self,
                org: uuid::Uuid,
            ) -> $crate::store::StoreResult<Option<uuid::Uuid>> {
                let row: Option<(uuid::Uuid,)> = sqlx::query_as(
                    "SELECT id FROM operation_events WHERE organization_id = $1 \
                     ORDER BY seq DESC LIMIT 1",
                )
                .bind(org)
                .fetch_optional(self.reader())
                .await?;
                Ok(row.map(|(id,)| id))
            }
        }
    };
}
