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
        clock: "",
        org_claim_lock: "",
        skip_locked: "",
        analyze_patients: "",
        begin_write: "BEGIN IMMEDIATE",
        // One write lock for the file, waited for by the busy timeout.
        outwait_paused_holder: "",
        notify_queue: "",
        notify_events: "",
    };

    /// Opens (creating when missing) the database file named by `sqlite://PATH`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Deleted and replaced content is overwritten with zeros in the database
            // file, so that it does not stay readable in free pages (issue 8).
            .pragma("secure_delete", "on")
            .busy_timeout(Duration::from_secs(30));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            // A transaction dropped mid-way (a client gone, a task cancelled) is rolled
            // back by the connection's worker thread after the connection is back in the
            // pool; a ping waits for that, so the next BEGIN finds no transaction open.
            //
            // A BEGIN whose future was dropped before sqlx took note of it leaves a
            // transaction (and the write lock) open that nothing will end: a ROLLBACK
            // that succeeds finds such a connection, and it is discarded.
            .before_acquire(|conn, _meta| {
                Box::pin(async move {
                    sqlx::Connection::ping(&mut *conn).await?;
                    let leaked = sqlx::query("ROLLBACK").execute(&mut *conn).await.is_ok();
                    if leaked {
                        tracing::warn!(
                            "discarding a database connection left inside a transaction"
                        );
                    }
                    Ok(!leaked)
                })
            })
            .connect_with(options.clone())
            .await?;
        restrict_to_owner(options.get_filename());
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

    /// Patients by id, deleted or not (see [`super::sqlite_direct`]).
    async fn fetch_by_ids(
        &self,
        org: uuid::Uuid,
        ids: &[uuid::Uuid],
    ) -> StoreResult<Vec<crate::domain::patient::Patient>> {
        super::sqlite_direct::patients_by_id(&self.read, org, ids).await
    }

    /// A page of an operation's before-images (see [`super::sqlite_direct`]).
    async fn backup_page(
        &self,
        operation_id: uuid::Uuid,
        after: Option<uuid::Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<super::ops::Backup>> {
        super::sqlite_direct::backups(&self.read, operation_id, after, limit).await
    }

    async fn run_migrations(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.write)
            .await?;
        Ok(())
    }
}

/// The database file holds the patients table in plaintext: only its owner may read
/// it (and its WAL and shared-memory files, which SQLite creates with the same mode).
fn restrict_to_owner(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
    }
}

impl SqliteStore {
    /// Inserts new patients (see [`super::sqlite_direct`]).
    async fn insert_patients(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        patients: &[crate::domain::patient::Patient],
    ) -> StoreResult<()> {
        super::sqlite_direct::insert_patients(tx, patients).await
    }

    /// The before-images of a chunk's writes (see [`super::sqlite_direct`]).
    async fn insert_backups(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        operation_id: uuid::Uuid,
        writes: &[super::ops::PatientWrite],
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        super::sqlite_direct::insert_backups(tx, operation_id, writes, now).await
    }

    /// Writes each patient's new state if its version is still the expected one (see
    /// [`super::sqlite_direct`]); the first patient whose version moved on is returned
    /// (the caller rolls back).
    async fn write_patients(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        org: uuid::Uuid,
        writes: &[super::ops::PatientWrite],
        written: &super::ops::WrittenColumns,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Option<uuid::Uuid>> {
        super::sqlite_direct::write_patients(tx, org, writes, written, now).await
    }

    /// One page of the scanned patients, read with SQLite's C API (see
    /// [`super::sqlite_direct`]).
    async fn scan_patient_page(
        &self,
        scan: super::ops::PatientScan<'_>,
    ) -> StoreResult<Vec<crate::domain::patient::Patient>> {
        super::sqlite_direct::scan_patients(&self.read, scan).await
    }

    /// `SELECT id, <columns>` of the scanned patients, read with SQLite's C API on a
    /// blocking thread (see [`super::sqlite_direct`]).
    fn stream_patient_columns(
        &self,
        org: uuid::Uuid,
        filters: crate::domain::filters::PatientFilters,
        include_deleted: bool,
        columns: Vec<&'static str>,
        batch: usize,
    ) -> tokio::sync::mpsc::Receiver<StoreResult<Vec<crate::domain::patient::Patient>>> {
        super::sqlite_direct::stream_patients(
            self.read.clone(),
            super::ops::PatientScan {
                org,
                filters: &filters,
                include_deleted,
                imported_by: None,
                page: super::Page {
                    after: None,
                    limit: 0,
                },
            },
            columns,
            batch,
        )
    }

    /// SQLite has no channel between processes. A dedicated connection reads
    /// `PRAGMA data_version` every 50 ms (a cheap in-memory read that changes when
    /// another connection commits) and calls `on_change` when it moves: another process
    /// that schedules or finishes an operation is noticed within ~50 ms, without busy
    /// polling of the tables.
    async fn watch_queue_impl(&self, on_change: &(dyn Fn() + Send + Sync)) -> StoreResult<()> {
        self.watch_data_version(on_change).await
    }

    async fn watch_channel_impl(
        &self,
        _channel: &str,
        on_change: &(dyn Fn() + Send + Sync),
    ) -> StoreResult<()> {
        self.watch_data_version(on_change).await
    }

    async fn watch_data_version(&self, on_change: &(dyn Fn() + Send + Sync)) -> StoreResult<()> {
        use sqlx::ConnectOptions;
        let mut conn = self.read.connect_options().connect().await?;
        let mut seen: i64 = sqlx::query_scalar("PRAGMA data_version")
            .fetch_one(&mut conn)
            .await?;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now: i64 = sqlx::query_scalar("PRAGMA data_version")
                .fetch_one(&mut conn)
                .await?;
            if now != seen {
                seen = now;
                on_change();
            }
        }
    }
}

shared_store_impl!(SqliteStore, Sqlite, sqlx::sqlite::SqliteRow, "sqlite");
ops_store_impl!(SqliteStore, Sqlite, sqlx::sqlite::SqliteRow);
notify_store_impl!(SqliteStore, Sqlite, sqlx::sqlite::SqliteRow);
schedules_store_impl!(SqliteStore, Sqlite, sqlx::sqlite::SqliteRow);
security_store_impl!(SqliteStore, "sqlite", "");
web_store_impl!(SqliteStore);
