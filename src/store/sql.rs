//! The SQL both backends share.
//!
//! The two backends run the same statements with `$n` placeholders (SQLite accepts
//! them) and bind the same Rust types; sqlx encodes them natively for each (UUID as
//! BLOB and timestamps as TEXT on SQLite, `uuid`/`timestamptz` on PostgreSQL). Rather
//! than write every method twice, or build on `sqlx::Any` (which cannot bind UUIDs or
//! timestamps), this macro expands the shared implementation once per concrete backend;
//! what differs between them comes from the backend's [`Dialect`] and its own file.

/// The SQL fragments that differ between backends.
pub struct Dialect {
    /// Appended to a SELECT that must lock the rows it reads (empty on SQLite, where
    /// the single writer connection already serializes writers).
    pub for_update: &'static str,
    /// Reads the database's clock at the moment of the statement (empty on SQLite:
    /// its write transaction takes the lock at `BEGIN`, so nothing waits after the
    /// process reads its own clock).
    pub clock: &'static str,
    /// Tries, without waiting, to take an organization's claim lock for the rest of the
    /// transaction (`$1` the organization); true when taken. Claimers of one
    /// organization are serialized so `--max-per-org` holds across processes; claimers
    /// of different organizations never wait for each other. Empty on SQLite (one writer).
    pub org_claim_lock: &'static str,
    /// Appended to a SELECT that locks the rows it reads but skips rows another
    /// transaction holds (empty on SQLite).
    pub skip_locked: &'static str,
    /// Refreshes the planner's statistics of `patients` during bulk writes (empty on
    /// SQLite, whose planner does not need them for these queries).
    pub analyze_patients: &'static str,
    /// How write transactions begin. SQLite's `IMMEDIATE` takes the write lock at once:
    /// a deferred transaction that reads first can fail with `SQLITE_BUSY` when another
    /// process writes meanwhile, without waiting for the busy timeout.
    pub begin_write: &'static str,
    /// Run first in a user's write that must not fail because a paused process holds
    /// the row (a cancel): waits longer than the server takes to end that process's
    /// idle transaction (`idle_in_transaction_session_timeout`). Empty: nothing to run.
    pub outwait_paused_holder: &'static str,
    /// Signals a change of the queue to other processes (PostgreSQL NOTIFY).
    pub notify_queue: &'static str,
    /// Signals new operation events to other processes' WebSocket hubs.
    pub notify_events: &'static str,
}

/// Columns of `patients`, in the order `patient_from_row` and `bind_patient` use.
pub const PATIENT_COLUMNS: &str = "id, organization_id, given_name, family_name, gender, \
    unhcr_number, middle_names, date_of_birth, estimated_birth_year, place_of_birth, \
    refugee_status, origin_country, current_camp, camp_section, phone_number, email, \
    primary_language, languages_spoken, blood_type, allergies, chronic_conditions, \
    emergency_contact_name, emergency_contact_phone, verification_status, created_at, \
    updated_at, version, deleted_at, import_operation_id";

/// `$1, $2, ...` for the patient columns.
pub const PATIENT_PLACEHOLDERS: &str = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
    $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29";

/// `SET` list of an update of the writable fields; `$1` is the id, `$2` the org.
pub const PATIENT_UPDATE_SET: &str = "given_name = $3, family_name = $4, gender = $5, \
    unhcr_number = $6, middle_names = $7, date_of_birth = $8, estimated_birth_year = $9, \
    place_of_birth = $10, refugee_status = $11, origin_country = $12, current_camp = $13, \
    camp_section = $14, phone_number = $15, email = $16, primary_language = $17, \
    languages_spoken = $18, blood_type = $19, allergies = $20, chronic_conditions = $21, \
    emergency_contact_name = $22, emergency_contact_phone = $23, verification_status = $24";

pub fn list_to_text(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".to_string())
}

pub fn text_to_list(text: &str) -> Result<Vec<String>, super::StoreError> {
    serde_json::from_str(text).map_err(|e| super::StoreError::Corrupt(format!("list column: {e}")))
}

/// A value a patient filter compares with.
pub enum FilterValue {
    Text(String),
    Id(uuid::Uuid),
    Date(chrono::NaiveDate),
    Time(chrono::DateTime<chrono::Utc>),
}

/// One condition of a patient filter: `column op value`, or `column IN (values)` when
/// `op` is `IN` (an empty list selects nobody, never the whole organization).
pub struct FilterClause {
    pub column: &'static str,
    pub op: &'static str,
    pub values: Vec<FilterValue>,
}

/// The conditions of `filters`, in one order for every way of sending SQL (sqlx's
/// query builder, SQLite's C API for exports).
pub fn filter_clauses(filters: &crate::domain::filters::PatientFilters) -> Vec<FilterClause> {
    let mut clauses = Vec::new();
    let mut clause = |column, op, values| clauses.push(FilterClause { column, op, values });
    let text = |v: &Option<String>| v.clone().map(FilterValue::Text);
    for (column, value) in [
        ("gender", text(&filters.gender)),
        ("refugee_status", text(&filters.refugee_status)),
        ("origin_country", text(&filters.origin_country)),
        ("current_camp", text(&filters.current_camp)),
        ("camp_section", text(&filters.camp_section)),
        ("verification_status", text(&filters.verification_status)),
    ] {
        if let Some(value) = value {
            clause(column, "=", vec![value]);
        }
    }
    if let Some(d) = filters.born_after {
        clause("date_of_birth", ">=", vec![FilterValue::Date(d)]);
    }
    if let Some(d) = filters.born_before {
        clause("date_of_birth", "<=", vec![FilterValue::Date(d)]);
    }
    if let Some(t) = filters.updated_since {
        clause("updated_at", ">=", vec![FilterValue::Time(t)]);
    }
    if let Some(numbers) = &filters.unhcr_numbers {
        let values = numbers.iter().cloned().map(FilterValue::Text).collect();
        clause("unhcr_number", "IN", values);
    }
    if let Some(ids) = &filters.patient_ids {
        clause(
            "id",
            "IN",
            ids.iter().copied().map(FilterValue::Id).collect(),
        );
    }
    clauses
}

/// Typed reads of a result row's columns by position (`None` for NULL), so that
/// patients are decoded alike from sqlx's rows and from SQLite's C API.
pub trait ColumnRead {
    fn text(&self, i: usize) -> super::StoreResult<Option<String>>;
    fn id(&self, i: usize) -> super::StoreResult<Option<uuid::Uuid>>;
    fn int(&self, i: usize) -> super::StoreResult<Option<i64>>;
    fn date(&self, i: usize) -> super::StoreResult<Option<chrono::NaiveDate>>;
    fn time(&self, i: usize) -> super::StoreResult<Option<chrono::DateTime<chrono::Utc>>>;
}

/// A patient from a row of `SELECT id, <columns>`: only those columns are decoded (by
/// position); the others keep their empty defaults.
pub fn patient_from_columns(
    row: &impl ColumnRead,
    columns: &[&'static str],
    org: uuid::Uuid,
) -> super::StoreResult<crate::domain::patient::Patient> {
    fn required<T>(value: Option<T>, column: &str) -> super::StoreResult<T> {
        value.ok_or_else(|| super::StoreError::Corrupt(format!("{column} is NULL")))
    }
    let list = |i: usize| match row.text(i)? {
        Some(text) => text_to_list(&text),
        None => Ok(Vec::new()),
    };
    let mut p = crate::domain::patient::Patient {
        id: required(row.id(0)?, "id")?,
        organization_id: org,
        fields: crate::domain::patient::PatientFields::new_draft(),
        created_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        updated_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        version: 0,
        deleted_at: None,
        import_operation_id: None,
    };
    for (i, column) in columns.iter().enumerate() {
        let i = i + 1;
        let f = &mut p.fields;
        match *column {
            "organization_id" => p.organization_id = required(row.id(i)?, column)?,
            "created_at" => p.created_at = required(row.time(i)?, column)?,
            "updated_at" => p.updated_at = required(row.time(i)?, column)?,
            "version" => p.version = required(row.int(i)?, column)?,
            "deleted_at" => p.deleted_at = row.time(i)?,
            "given_name" => f.given_name = required(row.text(i)?, column)?,
            "family_name" => f.family_name = required(row.text(i)?, column)?,
            "gender" => f.gender = required(row.text(i)?, column)?,
            "unhcr_number" => f.unhcr_number = row.text(i)?,
            "middle_names" => f.middle_names = row.text(i)?,
            "date_of_birth" => f.date_of_birth = row.date(i)?,
            "estimated_birth_year" => f.estimated_birth_year = row.int(i)?,
            "place_of_birth" => f.place_of_birth = row.text(i)?,
            "refugee_status" => f.refugee_status = row.text(i)?,
            "origin_country" => f.origin_country = row.text(i)?,
            "current_camp" => f.current_camp = row.text(i)?,
            "camp_section" => f.camp_section = row.text(i)?,
            "phone_number" => f.phone_number = row.text(i)?,
            "email" => f.email = row.text(i)?,
            "primary_language" => f.primary_language = row.text(i)?,
            "languages_spoken" => f.languages_spoken = list(i)?,
            "blood_type" => f.blood_type = row.text(i)?,
            "allergies" => f.allergies = list(i)?,
            "chronic_conditions" => f.chronic_conditions = list(i)?,
            "emergency_contact_name" => f.emergency_contact_name = row.text(i)?,
            "emergency_contact_phone" => f.emergency_contact_phone = row.text(i)?,
            "verification_status" => f.verification_status = required(row.text(i)?, column)?,
            "import_operation_id" => p.import_operation_id = row.id(i)?,
            _ => {}
        }
    }
    Ok(p)
}

/// Maps a unique-constraint violation to the field it protects.
pub fn classify(err: sqlx::Error) -> super::StoreError {
    if let sqlx::Error::Database(db) = &err {
        if db.is_unique_violation() {
            let text = format!("{} {}", db.constraint().unwrap_or(""), db.message());
            if text.contains("unhcr") {
                return super::StoreError::Duplicate("unhcr_number");
            }
            if text.contains("email") {
                return super::StoreError::Duplicate("email");
            }
            if text.contains("one_rollback") || text.contains("target_operation_id") {
                return super::StoreError::Duplicate("rollback");
            }
            if text.contains("idempotency") {
                return super::StoreError::Duplicate("idempotency_key");
            }
            if text.contains("occurrence") {
                return super::StoreError::Duplicate("occurrence");
            }
        }
    }
    super::StoreError::Database(err)
}

/// Expands the shared `Store` implementation for one backend. `$store` must have
/// `reader()`/`writer()` returning `&sqlx::Pool<$db>`, a `DIALECT` constant,
/// and `run_migrations()`.
macro_rules! shared_store_impl {
    ($store:ty, $db:ty, $row:ty, $backend:literal) => {
        impl $crate::store::sql::ColumnRead for $row {
            fn text(&self, i: usize) -> $crate::store::StoreResult<Option<String>> {
                Ok(sqlx::Row::try_get(self, i)?)
            }
            fn id(&self, i: usize) -> $crate::store::StoreResult<Option<uuid::Uuid>> {
                Ok(sqlx::Row::try_get(self, i)?)
            }
            fn int(&self, i: usize) -> $crate::store::StoreResult<Option<i64>> {
                Ok(sqlx::Row::try_get(self, i)?)
            }
            fn date(&self, i: usize) -> $crate::store::StoreResult<Option<chrono::NaiveDate>> {
                Ok(sqlx::Row::try_get(self, i)?)
            }
            fn time(&self, i: usize) -> $crate::store::StoreResult<Option<chrono::DateTime<chrono::Utc>>> {
                Ok(sqlx::Row::try_get(self, i)?)
            }
        }

        impl $store {
            fn patient_from_row(row: &$row) -> $crate::store::StoreResult<$crate::domain::patient::Patient> {
                use sqlx::Row;
                use $crate::store::sql::text_to_list;
                let fields = $crate::domain::patient::PatientFields {
                    given_name: row.try_get("given_name")?,
                    family_name: row.try_get("family_name")?,
                    gender: row.try_get("gender")?,
                    unhcr_number: row.try_get("unhcr_number")?,
                    middle_names: row.try_get("middle_names")?,
                    date_of_birth: row.try_get("date_of_birth")?,
                    estimated_birth_year: row.try_get("estimated_birth_year")?,
                    place_of_birth: row.try_get("place_of_birth")?,
                    refugee_status: row.try_get("refugee_status")?,
                    origin_country: row.try_get("origin_country")?,
                    current_camp: row.try_get("current_camp")?,
                    camp_section: row.try_get("camp_section")?,
                    phone_number: row.try_get("phone_number")?,
                    email: row.try_get("email")?,
                    primary_language: row.try_get("primary_language")?,
                    languages_spoken: text_to_list(row.try_get("languages_spoken")?)?,
                    blood_type: row.try_get("blood_type")?,
                    allergies: text_to_list(row.try_get("allergies")?)?,
                    chronic_conditions: text_to_list(row.try_get("chronic_conditions")?)?,
                    emergency_contact_name: row.try_get("emergency_contact_name")?,
                    emergency_contact_phone: row.try_get("emergency_contact_phone")?,
                    verification_status: row.try_get("verification_status")?,
                };
                Ok($crate::domain::patient::Patient {
                    id: row.try_get("id")?,
                    organization_id: row.try_get("organization_id")?,
                    fields,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    version: row.try_get("version")?,
                    deleted_at: row.try_get("deleted_at")?,
                    import_operation_id: row.try_get("import_operation_id")?,
                })
            }

            /// Binds the writable fields as `$3..$24` (after id and org).
            fn bind_fields<'q>(
                query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
                f: &'q $crate::domain::patient::PatientFields,
            ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>> {
                use $crate::store::sql::list_to_text;
                query
                    .bind(&f.given_name)
                    .bind(&f.family_name)
                    .bind(&f.gender)
                    .bind(&f.unhcr_number)
                    .bind(&f.middle_names)
                    .bind(f.date_of_birth)
                    .bind(f.estimated_birth_year)
                    .bind(&f.place_of_birth)
                    .bind(&f.refugee_status)
                    .bind(&f.origin_country)
                    .bind(&f.current_camp)
                    .bind(&f.camp_section)
                    .bind(&f.phone_number)
                    .bind(&f.email)
                    .bind(&f.primary_language)
                    .bind(list_to_text(&f.languages_spoken))
                    .bind(&f.blood_type)
                    .bind(list_to_text(&f.allergies))
                    .bind(list_to_text(&f.chronic_conditions))
                    .bind(&f.emergency_contact_name)
                    .bind(&f.emergency_contact_phone)
                    .bind(&f.verification_status)
            }

            fn user_from_row(row: &$row) -> $crate::store::StoreResult<$crate::store::User> {
                use sqlx::Row;
                let role: String = row.try_get("role")?;
                Ok($crate::store::User {
                    id: row.try_get("id")?,
                    organization_id: row.try_get("organization_id")?,
                    email: row.try_get("email")?,
                    role: $crate::domain::permission::Role::parse(&role)
                        .ok_or_else(|| $crate::store::StoreError::Corrupt(format!("unknown role {role}")))?,
                    created_at: row.try_get("created_at")?,
                })
            }

            fn audit_from_row(row: &$row) -> $crate::store::StoreResult<$crate::store::AuditEntry> {
                use sqlx::Row;
                Ok($crate::store::AuditEntry {
                    id: row.try_get("id")?,
                    organization_id: row.try_get("organization_id")?,
                    seq: row.try_get("seq")?,
                    occurred_at: row.try_get("occurred_at")?,
                    user_id: row.try_get("user_id")?,
                    action: row.try_get("action")?,
                    resource_type: row.try_get("resource_type")?,
                    resource_id: row.try_get("resource_id")?,
                    operation_id: row.try_get("operation_id")?,
                    client_addr: row.try_get("client_addr")?,
                    outcome: row.try_get("outcome")?,
                    details: row.try_get("details")?,
                    prev_hash: row.try_get("prev_hash")?,
                    hash: row.try_get("hash")?,
                    key_id: row.try_get("key_id")?,
                })
            }

            /// Appends an audit entry inside the caller's transaction, locking the chain
            /// head so that concurrent writers of one organization take turns.
            /// Ends a write of one row of an organization's (found by id and
            /// organization): audited and committed when the row was there, rolled
            /// back (the transaction dropped) and `false` when it was not.
            async fn commit_audited_if_found(
                mut tx: sqlx::Transaction<'_, $db>,
                changed: u64,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<bool> {
                if changed != 1 {
                    return Ok(false);
                }
                Self::append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn append_audit_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                new: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<$crate::store::AuditEntry> {
                use sqlx::Row;
                let head_sql = format!(
                    "SELECT seq, hash FROM audit_heads WHERE organization_id = $1{}",
                    Self::DIALECT.for_update
                );
                let head = sqlx::query(&head_sql)
                    .bind(new.organization_id)
                    .fetch_optional(&mut **tx)
                    .await?;
                let (seq, hash): (i64, String) = match head {
                    Some(row) => (row.try_get("seq")?, row.try_get("hash")?),
                    None => (0, $crate::audit::GENESIS_HASH.to_string()),
                };
                let keys = $crate::audit::installed_keys()?;
                let entry = $crate::audit::chain_next(new, seq, &hash, &keys)?;
                sqlx::query(
                    "INSERT INTO audit_events (id, organization_id, seq, occurred_at, user_id, action, \
                     resource_type, resource_id, operation_id, client_addr, outcome, details, prev_hash, hash, key_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                )
                .bind(entry.id)
                .bind(entry.organization_id)
                .bind(entry.seq)
                .bind(entry.occurred_at)
                .bind(entry.user_id)
                .bind(&entry.action)
                .bind(&entry.resource_type)
                .bind(&entry.resource_id)
                .bind(entry.operation_id)
                .bind(&entry.client_addr)
                .bind(&entry.outcome)
                .bind(&entry.details)
                .bind(&entry.prev_hash)
                .bind(&entry.hash)
                .bind(&entry.key_id)
                .execute(&mut **tx)
                .await?;
                sqlx::query(
                    "INSERT INTO audit_heads (organization_id, seq, hash) VALUES ($1, $2, $3) \
                     ON CONFLICT (organization_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                )
                .bind(entry.organization_id)
                .bind(entry.seq)
                .bind(&entry.hash)
                .execute(&mut **tx)
                .await?;
                Ok(entry)
            }

            /// Narrows a transaction to one organization: on PostgreSQL, row-level security
            /// (migration 0005) then hides every other organization's rows from it, even
            /// from a query that forgot its `organization_id` condition. SQLite has no
            /// row-level security; the conditions in the queries are its isolation.
            async fn scope_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                org: uuid::Uuid,
            ) -> $crate::store::StoreResult<()> {
                if $backend == "postgres" {
                    sqlx::query("SELECT set_config('haven.organization_id', $1, true)")
                        .bind(org.to_string())
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(())
            }

            /// A read-only transaction narrowed to one organization (see `scope_tx`).
            async fn scoped_read(
                &self,
                org: uuid::Uuid,
            ) -> $crate::store::StoreResult<sqlx::Transaction<'_, $db>> {
                let mut tx = self.reader().begin().await?;
                Self::scope_tx(&mut tx, org).await?;
                Ok(tx)
            }

            /// A write transaction narrowed to one organization (see `scope_tx`).
            async fn scoped_write(
                &self,
                org: uuid::Uuid,
            ) -> $crate::store::StoreResult<sqlx::Transaction<'_, $db>> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                Self::scope_tx(&mut tx, org).await?;
                Ok(tx)
            }

            fn push_filters(
                qb: &mut sqlx::QueryBuilder<'_, $db>,
                filters: &$crate::domain::filters::PatientFilters,
            ) {
                use $crate::store::sql::FilterValue;
                for clause in $crate::store::sql::filter_clauses(filters) {
                    if clause.op == "IN" && clause.values.is_empty() {
                        qb.push(" AND 1 = 0");
                        continue;
                    }
                    let (open, close) = if clause.op == "IN" { ("IN (", ")") } else { (clause.op, "") };
                    qb.push(format!(" AND {} {open}", clause.column));
                    let mut list = qb.separated(", ");
                    for value in clause.values {
                        match value {
                            FilterValue::Text(v) => list.push_bind(v),
                            FilterValue::Id(v) => list.push_bind(v),
                            FilterValue::Date(v) => list.push_bind(v),
                            FilterValue::Time(v) => list.push_bind(v),
                        };
                    }
                    qb.push(close);
                }
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            async fn migrate(&self) -> $crate::store::StoreResult<()> {
                self.run_migrations().await
            }

            async fn ping(&self) -> $crate::store::StoreResult<()> {
                sqlx::query("SELECT 1").execute(self.reader()).await?;
                Ok(())
            }

            fn backend(&self) -> &'static str {
                $backend
            }

            async fn count_organizations(&self) -> $crate::store::StoreResult<i64> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM organizations")
                    .fetch_one(self.reader())
                    .await?;
                Ok(n)
            }

            async fn create_organization(&self, org: &$crate::store::Organization) -> $crate::store::StoreResult<()> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(org.id)
                    .bind(&org.name)
                    .bind(org.created_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO audit_heads (organization_id, seq, hash) VALUES ($1, 0, $2)")
                    .bind(org.id)
                    .bind($crate::audit::GENESIS_HASH)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_organization(&self, id: uuid::Uuid) -> $crate::store::StoreResult<Option<$crate::store::Organization>> {
                let row: Option<(uuid::Uuid, String, chrono::DateTime<chrono::Utc>)> =
                    sqlx::query_as("SELECT id, name, created_at FROM organizations WHERE id = $1")
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await?;
                Ok(row.map(|(id, name, created_at)| $crate::store::Organization { id, name, created_at }))
            }

            async fn list_organization_ids(&self) -> $crate::store::StoreResult<Vec<uuid::Uuid>> {
                let rows: Vec<(uuid::Uuid,)> = sqlx::query_as("SELECT id FROM organizations ORDER BY id")
                    .fetch_all(self.reader())
                    .await?;
                Ok(rows.into_iter().map(|(id,)| id).collect())
            }

            async fn create_user(&self, user: &$crate::store::User, password_hash: &str) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO users (id, organization_id, email, password_hash, role, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(user.id)
                .bind(user.organization_id)
                .bind(&user.email)
                .bind(password_hash)
                .bind(user.role.as_str())
                .bind(user.created_at)
                .execute(self.writer())
                .await
                .map_err($crate::store::sql::classify)?;
                Ok(())
            }

            async fn find_user_by_email(&self, email: &str) -> $crate::store::StoreResult<Option<$crate::store::UserCredentials>> {
                use sqlx::Row;
                let row = sqlx::query(
                    "SELECT id, organization_id, email, role, created_at, password_hash FROM users WHERE email = $1",
                )
                .bind(email)
                .fetch_optional(self.reader())
                .await?;
                match row {
                    None => Ok(None),
                    Some(row) => Ok(Some($crate::store::UserCredentials {
                        user: Self::user_from_row(&row)?,
                        password_hash: row.try_get("password_hash")?,
                    })),
                }
            }

            async fn insert_token(&self, token: &$crate::store::TokenRecord) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO tokens (token_hash, user_id, organization_id, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&token.token_hash)
                .bind(token.user_id)
                .bind(token.organization_id)
                .bind(token.created_at)
                .bind(token.expires_at)
                .execute(self.writer())
                .await?;
                Ok(())
            }

            async fn find_active_token(
                &self,
                token_hash: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<Option<$crate::store::User>> {
                let row = sqlx::query(
                    "SELECT u.id, u.organization_id, u.email, u.role, u.created_at FROM tokens t \
                     JOIN users u ON u.id = t.user_id AND u.organization_id = t.organization_id \
                     WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > $2",
                )
                .bind(token_hash)
                .bind(now)
                .fetch_optional(self.reader())
                .await?;
                row.as_ref().map(Self::user_from_row).transpose()
            }

            async fn revoke_token(&self, token_hash: &str, now: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<()> {
                sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL")
                    .bind(token_hash)
                    .bind(now)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn clear_login_failures(&self, key: &str) -> $crate::store::StoreResult<()> {
                sqlx::query("DELETE FROM login_failures WHERE throttle_key = $1")
                    .bind(key)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn insert_patient(
                &self,
                patient: &$crate::domain::patient::Patient,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.scoped_write(patient.organization_id).await?;
                let sql = format!(
                    "INSERT INTO patients ({}) VALUES ({})",
                    $crate::store::sql::PATIENT_COLUMNS,
                    $crate::store::sql::PATIENT_PLACEHOLDERS
                );
                let query = sqlx::query(&sql).bind(patient.id).bind(patient.organization_id);
                Self::bind_fields(query, &patient.fields)
                    .bind(patient.created_at)
                    .bind(patient.updated_at)
                    .bind(patient.version)
                    .bind(patient.deleted_at)
                    .bind(patient.import_operation_id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::store::sql::classify)?;
                Self::append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_patient(
                &self,
                org: uuid::Uuid,
                id: uuid::Uuid,
            ) -> $crate::store::StoreResult<Option<$crate::domain::patient::Patient>> {
                let sql = format!(
                    "SELECT {} FROM patients WHERE id = $1 AND organization_id = $2 AND deleted_at IS NULL",
                    $crate::store::sql::PATIENT_COLUMNS
                );
                let mut tx = self.scoped_read(org).await?;
                let row = sqlx::query(&sql).bind(id).bind(org).fetch_optional(&mut *tx).await?;
                tx.commit().await?;
                row.as_ref().map(Self::patient_from_row).transpose()
            }

            async fn list_patients(
                &self,
                org: uuid::Uuid,
                filters: &$crate::domain::filters::PatientFilters,
                page: &$crate::store::Page,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::patient::Patient>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM patients WHERE deleted_at IS NULL AND organization_id = ",
                    $crate::store::sql::PATIENT_COLUMNS
                ));
                qb.push_bind(org);
                Self::push_filters(&mut qb, filters);
                if let Some(after) = page.after {
                    qb.push(" AND id > ").push_bind(after);
                }
                qb.push(" ORDER BY id LIMIT ").push_bind(page.limit);
                let mut tx = self.scoped_read(org).await?;
                let rows = qb.build().fetch_all(&mut *tx).await?;
                tx.commit().await?;
                rows.iter().map(Self::patient_from_row).collect()
            }

            async fn update_patient(
                &self,
                org: uuid::Uuid,
                id: uuid::Uuid,
                expected_version: i64,
                fields: &$crate::domain::patient::PatientFields,
                now: chrono::DateTime<chrono::Utc>,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<$crate::domain::patient::Patient> {
                let mut tx = self.scoped_write(org).await?;
                let sql = format!(
                    "UPDATE patients SET {}, version = version + 1, updated_at = $25 \
                     WHERE id = $1 AND organization_id = $2 AND deleted_at IS NULL AND version = $26 \
                     RETURNING {}",
                    $crate::store::sql::PATIENT_UPDATE_SET,
                    $crate::store::sql::PATIENT_COLUMNS
                );
                let query = sqlx::query(&sql).bind(id).bind(org);
                let row = Self::bind_fields(query, fields)
                    .bind(now)
                    .bind(expected_version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::store::sql::classify)?;
                let Some(row) = row else {
                    // Tell a stale version apart from a patient that is not there.
                    let exists: Option<(i64,)> = sqlx::query_as(
                        "SELECT version FROM patients WHERE id = $1 AND organization_id = $2 AND deleted_at IS NULL",
                    )
                    .bind(id)
                    .bind(org)
                    .fetch_optional(&mut *tx)
                    .await?;
                    return Err(match exists {
                        Some(_) => $crate::store::StoreError::VersionConflict,
                        None => $crate::store::StoreError::NotFound,
                    });
                };
                let patient = Self::patient_from_row(&row)?;
                Self::append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(patient)
            }

            async fn soft_delete_patient(
                &self,
                org: uuid::Uuid,
                id: uuid::Uuid,
                now: chrono::DateTime<chrono::Utc>,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.scoped_write(org).await?;
                let done = sqlx::query(
                    "UPDATE patients SET deleted_at = $3, updated_at = $3, version = version + 1 \
                     WHERE id = $1 AND organization_id = $2 AND deleted_at IS NULL",
                )
                .bind(id)
                .bind(org)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound);
                }
                Self::append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn unhcr_number_taken(
                &self,
                org: uuid::Uuid,
                unhcr_number: &str,
                except: Option<uuid::Uuid>,
            ) -> $crate::store::StoreResult<bool> {
                let row: Option<(uuid::Uuid,)> = sqlx::query_as(
                    "SELECT id FROM patients WHERE organization_id = $1 AND unhcr_number = $2 \
                     AND deleted_at IS NULL LIMIT 1",
                )
                .bind(org)
                .bind(unhcr_number)
                .fetch_optional(&mut *self.scoped_read(org).await?)
                .await?;
                Ok(matches!(row, Some((id,)) if Some(id) != except))
            }

            async fn append_audit(&self, entry: $crate::store::NewAuditEntry) -> $crate::store::StoreResult<$crate::store::AuditEntry> {
                let mut tx = self.scoped_write(entry.organization_id).await?;
                let entry = Self::append_audit_tx(&mut tx, entry).await?;
                tx.commit().await?;
                Ok(entry)
            }

            async fn audit_entries(
                &self,
                org: uuid::Uuid,
                after_seq: i64,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::AuditEntry>> {
                let rows = sqlx::query(
                    "SELECT * FROM audit_events WHERE organization_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(org)
                .bind(after_seq)
                .bind(limit)
                .fetch_all(&mut *self.scoped_read(org).await?)
                .await?;
                rows.iter().map(Self::audit_from_row).collect()
            }

            async fn list_audit(
                &self,
                org: uuid::Uuid,
                page: &$crate::store::Page,
            ) -> $crate::store::StoreResult<Vec<$crate::store::AuditEntry>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT * FROM audit_events WHERE organization_id = ");
                qb.push_bind(org);
                if let Some(after) = page.after {
                    qb.push(" AND id < ").push_bind(after);
                }
                qb.push(" ORDER BY id DESC LIMIT ").push_bind(page.limit);
                let rows = qb.build().fetch_all(&mut *self.scoped_read(org).await?).await?;
                rows.iter().map(Self::audit_from_row).collect()
            }

            async fn audit_head(&self, org: uuid::Uuid) -> $crate::store::StoreResult<Option<$crate::store::AuditHead>> {
                let row: Option<(i64, String)> =
                    sqlx::query_as("SELECT seq, hash FROM audit_heads WHERE organization_id = $1")
                        .bind(org)
                        .fetch_optional(self.reader())
                        .await?;
                Ok(row.map(|(seq, hash)| $crate::store::AuditHead { seq, hash }))
            }
        }
    };
}
