//! The embedded SQLite backend (the default). WAL mode lets readers run beside the
//! writer; all writes go through a pool of one connection, so writers queue in the
//! process instead of failing with `SQLITE_BUSY` on lock upgrades.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::SqliteRow;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use super::sql::Dialect;
use super::StoreResult;

/// SQLite store: one writer connection, several readers.
#[derive(Clone)]
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
}

impl SqliteStore {
    const DIALECT: Dialect = Dialect {
        for_update: "",
        claim_lock: "",
        analyze_patients: "",
        begin_write: "BEGIN IMMEDIATE",
        notify_queue: "",
    };

    /// Opens (creating when missing) the database file named by `sqlite://PATH`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { read, write })
    }

    fn reader(&self) -> &SqlitePool {
        &self.read
    }

    fn writer(&self) -> &SqlitePool {
        &self.write
    }

    /// Live patients with one of these numbers (an `IN` list: SQLite has no arrays).
    async fn fetch_by_unhcr(
        &self,
        org: uuid::Uuid,
        numbers: &[String],
    ) -> StoreResult<Vec<SqliteRow>> {
        let mut qb = sqlx::QueryBuilder::<Sqlite>::new(format!(
            "SELECT {} FROM patients WHERE deleted_at IS NULL AND organization_id = ",
            super::sql::PATIENT_COLUMNS
        ));
        qb.push_bind(org).push(" AND unhcr_number IN (");
        let mut list = qb.separated(", ");
        for n in numbers {
            list.push_bind(n.clone());
        }
        qb.push(")");
        Ok(qb.build().fetch_all(&self.read).await?)
    }

    async fn run_migrations(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.write)
            .await?;
        Ok(())
    }
}

impl SqliteStore {
    /// SQLite has no channel between processes: they poll.
    async fn watch_queue_impl(&self, _on_change: &(dyn Fn() + Send + Sync)) -> StoreResult<()> {
        Ok(())
    }
}

shared_store_impl!(SqliteStore, Sqlite, sqlx::sqlite::SqliteRow, "sqlite");
ops_store_impl!(SqliteStore, Sqlite, sqlx::sqlite::SqliteRow);
