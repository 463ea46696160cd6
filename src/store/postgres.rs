//! The PostgreSQL backend: the engine for production and for several `haven`
//! processes. Rows that writers contend for are locked with `FOR UPDATE`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use super::sql::Dialect;
use super::StoreResult;

/// PostgreSQL store: one pool for reads and writes.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    url: String,
}

impl PgStore {
    const DIALECT: Dialect = Dialect {
        for_update: " FOR UPDATE",
        claim_lock: "SELECT pg_advisory_xact_lock(7171)",
        analyze_patients: "ANALYZE patients",
        begin_write: "BEGIN",
        notify_queue: "SELECT pg_notify('haven_operations', '')",
    };

    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(PgStore {
            pool,
            url: url.to_string(),
        })
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    /// Live patients with one of these numbers. One array parameter, not an `IN` list:
    /// PostgreSQL's cached plan for `= ANY($2)` uses the (unhcr_number, org) index,
    /// where a 500-value `IN` list planned on young statistics scanned the organization.
    async fn fetch_by_unhcr(&self, org: uuid::Uuid, numbers: &[String]) -> StoreResult<Vec<PgRow>> {
        let sql = format!(
            "SELECT {} FROM patients WHERE deleted_at IS NULL AND organization_id = $1 AND unhcr_number = ANY($2)",
            super::sql::PATIENT_COLUMNS
        );
        Ok(sqlx::query(&sql)
            .bind(org)
            .bind(numbers)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn run_migrations(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }
}

impl PgStore {
    async fn watch_queue_impl(&self, on_change: &(dyn Fn() + Send + Sync)) -> StoreResult<()> {
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen("haven_operations").await?;
        loop {
            listener.recv().await?;
            on_change();
        }
    }
}

shared_store_impl!(PgStore, Postgres, sqlx::postgres::PgRow, "postgres");
ops_store_impl!(PgStore, Postgres, sqlx::postgres::PgRow);
