//! The PostgreSQL backend: the engine for production and for several `haven`
//! processes. Rows that writers contend for are locked with `FOR UPDATE`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use super::sql::Dialect;
use super::StoreResult;

/// PostgreSQL store: one pool for reads and writes.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    const DIALECT: Dialect = Dialect {
        for_update: " FOR UPDATE",
        claim_lock: "SELECT pg_advisory_xact_lock(7171)",
    };

    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(PgStore { pool })
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    async fn run_migrations(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }
}

shared_store_impl!(PgStore, Postgres, sqlx::postgres::PgRow, "postgres");
ops_store_impl!(PgStore, Postgres, sqlx::postgres::PgRow);
