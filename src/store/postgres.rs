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
        clock: "SELECT clock_timestamp()",
        org_claim_lock: "SELECT pg_try_advisory_xact_lock(7171, hashtext(CAST($1 AS TEXT)))",
        skip_locked: " FOR UPDATE SKIP LOCKED",
        analyze_patients: "ANALYZE patients (organization_id, unhcr_number, deleted_at)",
        begin_write: "BEGIN",
        outwait_paused_holder: "SET LOCAL lock_timeout = '30s'",
        notify_queue: "SELECT pg_notify('haven_operations', '')",
        notify_events: "SELECT pg_notify('haven_events', '')",
    };

    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        // No statement waits long for a lock, and a transaction whose client stopped
        // mid-way (a paused or frozen process) is ended by the server: otherwise its
        // row locks would hold up everyone who needs those rows, indefinitely. Haven's
        // transactions never idle between statements, so neither limit hits healthy work.
        let options = PgConnectOptions::from_str(url)?.options([
            ("lock_timeout", "10s"),
            ("idle_in_transaction_session_timeout", "10s"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            // Row-level security (migration 0005): a connection of Haven sees every
            // organization unless a transaction narrows it to one (`scope_tx`).
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    sqlx::query("SELECT set_config('haven.organization_id', '*', false)")
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
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

    /// Patients by id, deleted or not, as one array parameter: one plan for any count
    /// (an `IN` list of 2,000 parameters is planned again at every chunk).
    async fn fetch_by_ids(
        &self,
        org: uuid::Uuid,
        ids: &[uuid::Uuid],
    ) -> StoreResult<Vec<crate::domain::patient::Patient>> {
        let sql = format!(
            "SELECT {} FROM patients WHERE organization_id = $1 AND id = ANY($2) ORDER BY id",
            super::sql::PATIENT_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(org)
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::patient_from_row).collect()
    }

    /// A page of an operation's before-images, by patient id.
    async fn backup_page(
        &self,
        operation_id: uuid::Uuid,
        after: Option<uuid::Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<super::ops::Backup>> {
        // Two statements, not `($2 IS NULL OR patient_id > $2)`: a generic plan of that
        // cannot start the index scan at `after`, and every page would read from the start.
        let sql = if after.is_some() {
            "SELECT patient_id, version_after, before_image FROM operation_backups \
             WHERE operation_id = $1 AND patient_id > $2 ORDER BY patient_id LIMIT $3"
        } else {
            "SELECT patient_id, version_after, before_image FROM operation_backups \
             WHERE operation_id = $1 AND $2::uuid IS NULL ORDER BY patient_id LIMIT $3"
        };
        let rows: Vec<(uuid::Uuid, i64, Vec<u8>)> = sqlx::query_as(sql)
            .bind(operation_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(patient_id, version_after, before_image)| super::ops::Backup {
                    patient_id,
                    version_after,
                    before_image,
                },
            )
            .collect())
    }

    async fn run_migrations(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }
}

impl PgStore {
    /// Inserts new patients with one statement over arrays, one per column: 29
    /// parameters whatever the number of rows, and one plan PostgreSQL keeps (a
    /// multi-row VALUES list of 500 rows bound 14,500 parameters, parsed and planned
    /// for each chunk).
    async fn insert_patients(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        patients: &[crate::domain::patient::Patient],
    ) -> StoreResult<()> {
        use super::sql::list_to_text;
        use crate::domain::patient::PatientFields;
        if patients.is_empty() {
            return Ok(());
        }
        fn column<'a, T>(
            patients: &'a [crate::domain::patient::Patient],
            get: impl Fn(&'a crate::domain::patient::Patient) -> T,
        ) -> Vec<T> {
            patients.iter().map(get).collect()
        }
        let text = |get: fn(&PatientFields) -> Option<&str>| -> Vec<Option<&str>> {
            patients.iter().map(|p| get(&p.fields)).collect()
        };
        let list = |get: fn(&PatientFields) -> &[String]| -> Vec<String> {
            patients
                .iter()
                .map(|p| list_to_text(get(&p.fields)))
                .collect()
        };
        sqlx::query(&format!(
            "INSERT INTO patients ({}) SELECT * FROM UNNEST($1::uuid[], $2::uuid[], \
             $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::date[], \
             $9::bigint[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], \
             $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], $20::text[], \
             $21::text[], $22::text[], $23::text[], $24::text[], $25::timestamptz[], \
             $26::timestamptz[], $27::bigint[], $28::timestamptz[], $29::uuid[])",
            super::sql::PATIENT_COLUMNS
        ))
        .bind(column(patients, |p| p.id))
        .bind(column(patients, |p| p.organization_id))
        .bind(text(|f| Some(f.given_name.as_str())))
        .bind(text(|f| Some(f.family_name.as_str())))
        .bind(text(|f| Some(f.gender.as_str())))
        .bind(text(|f| f.unhcr_number.as_deref()))
        .bind(text(|f| f.middle_names.as_deref()))
        .bind(column(patients, |p| p.fields.date_of_birth))
        .bind(column(patients, |p| p.fields.estimated_birth_year))
        .bind(text(|f| f.place_of_birth.as_deref()))
        .bind(text(|f| f.refugee_status.as_deref()))
        .bind(text(|f| f.origin_country.as_deref()))
        .bind(text(|f| f.current_camp.as_deref()))
        .bind(text(|f| f.camp_section.as_deref()))
        .bind(text(|f| f.phone_number.as_deref()))
        .bind(text(|f| f.email.as_deref()))
        .bind(text(|f| f.primary_language.as_deref()))
        .bind(list(|f| &f.languages_spoken))
        .bind(text(|f| f.blood_type.as_deref()))
        .bind(list(|f| &f.allergies))
        .bind(list(|f| &f.chronic_conditions))
        .bind(text(|f| f.emergency_contact_name.as_deref()))
        .bind(text(|f| f.emergency_contact_phone.as_deref()))
        .bind(text(|f| Some(f.verification_status.as_str())))
        .bind(column(patients, |p| p.created_at))
        .bind(column(patients, |p| p.updated_at))
        .bind(column(patients, |p| p.version))
        .bind(column(patients, |p| p.deleted_at))
        .bind(column(patients, |p| p.import_operation_id))
        .execute(&mut **tx)
        .await
        .map_err(super::sql::classify)?;
        Ok(())
    }

    /// One page of the scanned patients (see `OpsStore::scan_patients`).
    async fn scan_patient_page(
        &self,
        scan: super::ops::PatientScan<'_>,
    ) -> StoreResult<Vec<crate::domain::patient::Patient>> {
        let mut qb =
            sqlx::QueryBuilder::<Postgres>::new(format!("SELECT {}", super::sql::PATIENT_COLUMNS));
        Self::push_scan(&mut qb, &scan);
        if let Some(after) = scan.page.after {
            qb.push(" AND id > ").push_bind(after);
        }
        qb.push(" ORDER BY id LIMIT ").push_bind(scan.page.limit);
        let rows = qb.build().fetch_all(self.reader()).await?;
        rows.iter().map(Self::patient_from_row).collect()
    }

    /// `SELECT id, <columns>` of the scanned patients as one streamed query, in pages of
    /// `batch` (see `OpsStore::stream_patients`).
    fn stream_patient_columns(
        &self,
        org: uuid::Uuid,
        filters: crate::domain::filters::PatientFilters,
        include_deleted: bool,
        columns: Vec<&'static str>,
        batch: usize,
    ) -> tokio::sync::mpsc::Receiver<StoreResult<Vec<crate::domain::patient::Patient>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let store = self.clone();
        tokio::spawn(async move {
            use futures::TryStreamExt;
            let scan = super::ops::PatientScan {
                org,
                filters: &filters,
                include_deleted,
                imported_by: None,
                page: super::Page {
                    after: None,
                    limit: 0,
                },
            };
            let mut qb = sqlx::QueryBuilder::<Postgres>::new("SELECT id");
            for column in &columns {
                qb.push(", ").push(*column);
            }
            Self::push_scan(&mut qb, &scan);
            qb.push(" ORDER BY id");
            let mut rows = qb.build().fetch(store.reader());
            let mut page = Vec::with_capacity(batch);
            loop {
                let patient = match rows.try_next().await {
                    Ok(Some(row)) => super::sql::patient_from_columns(&row, &columns, org),
                    Ok(None) => break,
                    Err(e) => Err(e.into()),
                };
                match patient {
                    Ok(p) => page.push(p),
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                if page.len() >= batch {
                    let full = std::mem::replace(&mut page, Vec::with_capacity(batch));
                    if tx.send(Ok(full)).await.is_err() {
                        return;
                    }
                }
            }
            if !page.is_empty() {
                let _ = tx.send(Ok(page)).await;
            }
        });
        rx
    }

    /// The before-images of a chunk's writes, in one statement over arrays. A patient
    /// backed up already by this operation keeps its first image (the state before it).
    async fn insert_backups(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        operation_id: uuid::Uuid,
        writes: &[super::ops::PatientWrite],
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        let backed_up: Vec<&super::ops::PatientWrite> =
            writes.iter().filter(|w| w.backup.is_some()).collect();
        if backed_up.is_empty() {
            return Ok(());
        }
        let ids: Vec<uuid::Uuid> = backed_up.iter().map(|w| w.patient_id).collect();
        let versions: Vec<i64> = backed_up.iter().map(|w| w.expected_version + 1).collect();
        let images: Vec<&[u8]> = backed_up
            .iter()
            .filter_map(|w| w.backup.as_deref())
            .collect();
        sqlx::query(
            "INSERT INTO operation_backups (operation_id, patient_id, version_after, before_image, created_at) \
             SELECT $1, patient_id, version_after, before_image, $5 \
             FROM UNNEST($2::uuid[], $3::bigint[], $4::bytea[]) AS b(patient_id, version_after, before_image) \
             ON CONFLICT (operation_id, patient_id) DO NOTHING",
        )
        .bind(operation_id)
        .bind(&ids)
        .bind(&versions)
        .bind(&images)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Writes each patient's new state if its version is still the expected one, in one
    /// statement over arrays (a statement per patient cost a round trip each), setting
    /// the `written` columns only; the first patient whose version moved on is returned
    /// (the caller rolls back).
    async fn write_patients(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        org: uuid::Uuid,
        writes: &[super::ops::PatientWrite],
        written: &super::ops::WrittenColumns,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Option<uuid::Uuid>> {
        use crate::domain::patient::FieldRef;
        /// One written column's values, an array parameter of its SQL type.
        enum Column<'a> {
            Text(Vec<Option<&'a str>>),
            Date(Vec<Option<chrono::NaiveDate>>),
            Int(Vec<Option<i64>>),
            List(Vec<String>),
        }
        /// Every write's value of `field`, as `pick` takes it out of the field.
        fn values<'a, T>(
            writes: &'a [super::ops::PatientWrite],
            field: &str,
            pick: impl Fn(Option<FieldRef<'a>>) -> T,
        ) -> Vec<T> {
            writes.iter().map(|w| pick(w.fields.field(field))).collect()
        }
        let Some(first) = writes.first() else {
            return Ok(None);
        };
        let mut columns = Vec::with_capacity(written.fields.len());
        let mut set = String::new();
        let mut arrays = String::new();
        let mut names = String::new();
        for field in &written.fields {
            let (column, sql_type) = match first.fields.field(field) {
                Some(FieldRef::Text(_) | FieldRef::OptText(_)) => (
                    Column::Text(values(writes, field, |v| match v {
                        Some(FieldRef::Text(t)) => Some(t),
                        Some(FieldRef::OptText(t)) => t,
                        _ => None,
                    })),
                    "text",
                ),
                Some(FieldRef::Date(_)) => (
                    Column::Date(values(writes, field, |v| match v {
                        Some(FieldRef::Date(d)) => d,
                        _ => None,
                    })),
                    "date",
                ),
                Some(FieldRef::Int(_)) => (
                    Column::Int(values(writes, field, |v| match v {
                        Some(FieldRef::Int(n)) => n,
                        _ => None,
                    })),
                    "bigint",
                ),
                Some(FieldRef::List(_)) => (
                    Column::List(values(writes, field, |v| match v {
                        Some(FieldRef::List(items)) => super::sql::list_to_text(items),
                        _ => "[]".to_string(),
                    })),
                    "text",
                ),
                None => continue,
            };
            columns.push(column);
            set.push_str(&format!("{field} = v.{field}, "));
            arrays.push_str(&format!(", ${}::{sql_type}[]", columns.len() + 4));
            names.push_str(&format!(", {field}"));
        }
        if written.deleted_at {
            set.push_str("deleted_at = v.deleted_at, ");
            arrays.push_str(&format!(", ${}::timestamptz[]", columns.len() + 5));
            names.push_str(", deleted_at");
        }
        // $1 organization, $2 now, $3 ids, $4 expected versions, then the columns. The
        // column names in the text are `WRITABLE_FIELDS` constants, never input.
        let sql = format!(
            "UPDATE patients AS p SET {set}version = p.version + 1, updated_at = $2 \
             FROM UNNEST($3::uuid[], $4::bigint[]{arrays}) AS v(id, expected_version{names}) \
             WHERE p.id = v.id AND p.organization_id = $1 AND p.version = v.expected_version \
             RETURNING p.id"
        );
        let ids: Vec<uuid::Uuid> = writes.iter().map(|w| w.patient_id).collect();
        let versions: Vec<i64> = writes.iter().map(|w| w.expected_version).collect();
        let deleted: Vec<Option<chrono::DateTime<chrono::Utc>>> =
            writes.iter().map(|w| w.deleted_at).collect();
        let mut query = sqlx::query_as::<_, (uuid::Uuid,)>(&sql)
            .bind(org)
            .bind(now)
            .bind(&ids)
            .bind(&versions);
        for column in &columns {
            query = match column {
                Column::Text(v) => query.bind(v),
                Column::Date(v) => query.bind(v),
                Column::Int(v) => query.bind(v),
                Column::List(v) => query.bind(v),
            };
        }
        if written.deleted_at {
            query = query.bind(&deleted);
        }
        let updated = query
            .fetch_all(&mut **tx)
            .await
            .map_err(super::sql::classify)?;
        if updated.len() == writes.len() {
            return Ok(None);
        }
        let done: std::collections::HashSet<uuid::Uuid> =
            updated.into_iter().map(|(id,)| id).collect();
        Ok(ids.into_iter().find(|id| !done.contains(id)))
    }

    async fn watch_queue_impl(&self, on_change: &(dyn Fn() + Send + Sync)) -> StoreResult<()> {
        self.watch_channel_impl("haven_operations", on_change).await
    }

    /// Calls `on_change` for every NOTIFY on `channel` until the connection fails.
    async fn watch_channel_impl(
        &self,
        channel: &str,
        on_change: &(dyn Fn() + Send + Sync),
    ) -> StoreResult<()> {
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(channel).await?;
        loop {
            listener.recv().await?;
            on_change();
        }
    }
}

shared_store_impl!(PgStore, Postgres, sqlx::postgres::PgRow, "postgres");
ops_store_impl!(PgStore, Postgres, sqlx::postgres::PgRow);
notify_store_impl!(PgStore, Postgres, sqlx::postgres::PgRow);
schedules_store_impl!(PgStore, Postgres, sqlx::postgres::PgRow);
security_store_impl!(
    PgStore,
    "postgres",
    "SELECT pg_advisory_xact_lock(hashtextextended($1, 8008))"
);
web_store_impl!(PgStore);
