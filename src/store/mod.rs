//! Storage behind one trait, with a SQLite and a PostgreSQL implementation chosen once
//! at start from the database URL. Every method that touches organization data takes
//! the organization id and filters on it: isolation lives in the queries themselves.

#[macro_use]
mod sql;
#[macro_use]
mod ops_sql;
#[macro_use]
pub mod security;
pub mod ops;
#[macro_use]
mod notify_sql;
pub mod notify;
#[macro_use]
mod schedules_sql;
// The web UI's own queries (users, one operation's audit trail).
#[macro_use]
pub mod web_sql;
mod postgres;
pub mod schedules;
mod sqlite;
// SQLite's C API for the bulk paths, on the connections sqlx holds.
mod sqlite_direct;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::filters::PatientFilters;
use crate::domain::patient::{Patient, PatientFields};
use crate::domain::permission::Role;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// What can go wrong in the store, in terms the HTTP layer can map to statuses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// The row changed since the caller read it (optimistic concurrency).
    #[error("version conflict: the record changed since it was read")]
    VersionConflict,
    /// A unique rule was broken; holds the field name.
    #[error("duplicate value for {0}")]
    Duplicate(&'static str),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub email: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

/// A user with the password hash, only for checking a login.
#[derive(Debug, Clone)]
pub struct UserCredentials {
    pub user: User,
    pub password_hash: String,
}

/// A login token as stored: only its SHA-256, never the token itself.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub token_hash: String,
    pub user_id: Uuid,
    pub organization_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// An audit entry about to be appended; the store assigns seq and hashes.
#[derive(Debug, Clone)]
pub struct NewAuditEntry {
    pub organization_id: Uuid,
    pub user_id: Option<Uuid>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub operation_id: Option<Uuid>,
    pub client_addr: Option<String>,
    pub outcome: String,
    /// JSON text; never patient data.
    pub details: String,
}

impl NewAuditEntry {
    /// An entry about a bulk operation, in its own trail (written by the engine).
    pub fn for_operation(
        op: &crate::domain::operation::Operation,
        action: &str,
        outcome: &str,
        details: serde_json::Value,
    ) -> Self {
        NewAuditEntry {
            organization_id: op.organization_id,
            user_id: Some(op.user_id),
            action: action.to_string(),
            resource_type: "bulk_operation".to_string(),
            resource_id: Some(op.id.to_string()),
            operation_id: Some(op.id),
            client_addr: None,
            outcome: outcome.to_string(),
            details: details.to_string(),
        }
    }
}

/// An audit entry as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub seq: i64,
    pub occurred_at: DateTime<Utc>,
    pub user_id: Option<Uuid>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub operation_id: Option<Uuid>,
    pub client_addr: Option<String>,
    pub outcome: String,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
    /// The id of the audit key whose HMAC `hash` is; `None` for entries written before
    /// the chain was keyed (plain SHA-256).
    pub key_id: Option<String>,
}

/// The newest link of an organization's audit chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
}

/// A page of a keyset-paged list.
#[derive(Debug, Clone)]
pub struct Page {
    pub after: Option<Uuid>,
    pub limit: i64,
}

/// The storage interface. Implementations: [`SqliteStore`], [`PgStore`].
#[async_trait]
pub trait Store:
    ops::OpsStore
    + notify::NotifyStore
    + schedules::ScheduleStore
    + security::SecurityStore
    + web_sql::WebStore
    + Send
    + Sync
{
    /// Applies the embedded migrations of this backend.
    async fn migrate(&self) -> StoreResult<()>;
    /// Checks that the database answers (readiness).
    async fn ping(&self) -> StoreResult<()>;
    /// Which backend this is: "sqlite" or "postgres".
    fn backend(&self) -> &'static str;

    async fn count_organizations(&self) -> StoreResult<i64>;
    /// Creates an organization together with the start of its audit chain.
    async fn create_organization(&self, org: &Organization) -> StoreResult<()>;
    async fn get_organization(&self, id: Uuid) -> StoreResult<Option<Organization>>;
    async fn list_organization_ids(&self) -> StoreResult<Vec<Uuid>>;

    async fn create_user(&self, user: &User, password_hash: &str) -> StoreResult<()>;
    async fn find_user_by_email(&self, email: &str) -> StoreResult<Option<UserCredentials>>;

    async fn insert_token(&self, token: &TokenRecord) -> StoreResult<()>;
    /// The user of a token that is neither expired nor revoked.
    async fn find_active_token(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<User>>;
    async fn revoke_token(&self, token_hash: &str, now: DateTime<Utc>) -> StoreResult<()>;
    async fn clear_login_failures(&self, key: &str) -> StoreResult<()>;

    /// Inserts a patient and its audit entry in one transaction.
    async fn insert_patient(&self, patient: &Patient, audit: NewAuditEntry) -> StoreResult<()>;
    /// A non-deleted patient of the organization.
    async fn get_patient(&self, org: Uuid, id: Uuid) -> StoreResult<Option<Patient>>;
    async fn list_patients(
        &self,
        org: Uuid,
        filters: &PatientFilters,
        page: &Page,
    ) -> StoreResult<Vec<Patient>>;
    /// Replaces the fields when the stored version is `expected_version`; +1 version.
    async fn update_patient(
        &self,
        org: Uuid,
        id: Uuid,
        expected_version: i64,
        fields: &PatientFields,
        now: DateTime<Utc>,
        audit: NewAuditEntry,
    ) -> StoreResult<Patient>;
    /// Marks a patient deleted (soft), with its audit entry, in one transaction.
    async fn soft_delete_patient(
        &self,
        org: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
        audit: NewAuditEntry,
    ) -> StoreResult<()>;
    /// Whether a non-deleted patient other than `except` has this UNHCR number.
    async fn unhcr_number_taken(
        &self,
        org: Uuid,
        unhcr_number: &str,
        except: Option<Uuid>,
    ) -> StoreResult<bool>;

    /// Appends to the organization's audit chain in its own transaction.
    async fn append_audit(&self, entry: NewAuditEntry) -> StoreResult<AuditEntry>;
    /// Entries of one organization in chain order, `seq > after_seq`.
    async fn audit_entries(
        &self,
        org: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<AuditEntry>>;
    /// Entries newest first for the audit list page.
    async fn list_audit(&self, org: Uuid, page: &Page) -> StoreResult<Vec<AuditEntry>>;
    async fn audit_head(&self, org: Uuid) -> StoreResult<Option<AuditHead>>;
}

/// Opens the store named by the URL (`sqlite://...` or `postgres://...`).
pub async fn connect(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else {
        anyhow::bail!("unsupported database URL scheme: use sqlite://PATH or postgres://...")
    }
}
