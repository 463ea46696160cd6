//! SQLite's C API (through rusqlite) on the connections sqlx holds, for the bulk paths.
//!
//! sqlx-sqlite runs each statement on a worker thread and hands every result row over
//! a channel to the async side: for the thousands of statements of a chunk of patient
//! writes, and the rows of an export, that hand-off cost more than SQLite's own work
//! (BENCHMARKS.md, issue 13). Here the connection sqlx holds is locked
//! (`lock_handle`: its worker waits) and the statements run on it directly, inside the
//! same transaction: prepared once, stepped per row.
//!
//! Values are written exactly as sqlx encodes them (a UUID as a 16-byte blob, a date as
//! `%F` text, a time as RFC 3339 text with automatic sub-second digits), so rows
//! written either way compare, sort and decode alike.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::ToSql;
use sqlx::SqliteConnection;
use uuid::Uuid;

use super::ops::WrittenColumns;
use super::sql::{list_to_text, ColumnRead, FilterValue};
use super::{StoreError, StoreResult};
use crate::domain::patient::{FieldRef, Patient, PatientFields};

/// A UUID as sqlx stores it on SQLite.
struct Id(Uuid);

impl ToSql for Id {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Blob(self.0.as_bytes())))
    }
}

/// A date as sqlx stores it on SQLite.
struct Day(NaiveDate);

fn day_text(day: NaiveDate) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(Value::Text(day.format("%F").to_string()))
}

impl ToSql for Day {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(day_text(self.0))
    }
}

/// A time as sqlx stores it on SQLite.
struct Time(DateTime<Utc>);

fn time_text(time: DateTime<Utc>) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(Value::Text(
        time.to_rfc3339_opts(SecondsFormat::AutoSi, false),
    ))
}

impl ToSql for Time {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(time_text(self.0))
    }
}

impl ToSql for FilterValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            FilterValue::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            FilterValue::Id(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v.as_bytes())),
            FilterValue::Date(v) => day_text(*v),
            FilterValue::Time(v) => time_text(*v),
        })
    }
}

/// SQLite's error in the store's terms: busy, locked, I/O and full are worth retrying
/// (as through sqlx); a unique violation names its field. SQLite's messages name
/// tables and columns, never values.
fn store_error(err: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    if let rusqlite::Error::SqliteFailure(failure, message) = &err {
        let text = message.clone().unwrap_or_default();
        match failure.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull => {
                return StoreError::Database(sqlx::Error::Io(std::io::Error::other(format!(
                    "sqlite: {err}"
                ))))
            }
            ErrorCode::ConstraintViolation if text.contains("unhcr") => {
                return StoreError::Duplicate("unhcr_number")
            }
            _ => {}
        }
    }
    StoreError::Database(sqlx::Error::Protocol(format!("sqlite: {err}")))
}

/// Runs `work` on the raw connection under `conn` (inside whatever transaction it has
/// open). Synchronous: the caller keeps it short (one chunk) or runs it on a blocking
/// thread.
async fn with_raw<T>(
    conn: &mut SqliteConnection,
    work: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
) -> StoreResult<T> {
    let mut handle = conn.lock_handle().await?;
    run_raw(&mut handle, work)
}

fn run_raw<T>(
    handle: &mut sqlx::sqlite::LockedSqliteHandle<'_>,
    work: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
) -> StoreResult<T> {
    // SAFETY: the handle is locked for the whole call (sqlx's worker does not touch the
    // connection meanwhile) and `from_handle` does not close it when dropped, which
    // happens before the lock is released.
    let db = unsafe { rusqlite::Connection::from_handle(handle.as_raw_handle().as_ptr()) }
        .map_err(store_error)?;
    work(&db).map_err(store_error)
}

/// The shared SQL's `$n` as SQLite's `?n`. To SQLite itself `$1` is a *named*
/// parameter, numbered in order of appearance (sqlx maps the names to numbers; binding
/// by index here must not depend on the order the placeholders appear in).
fn numbered(sql: &str) -> String {
    sql.replace('$', "?")
}

/// Binds the writable fields as parameters `first..first + 22`, in the order of
/// [`super::sql::PATIENT_UPDATE_SET`] and [`super::sql::PATIENT_COLUMNS`].
fn bind_fields(
    stmt: &mut rusqlite::Statement<'_>,
    first: usize,
    f: &PatientFields,
) -> rusqlite::Result<()> {
    let text: [Option<&str>; 22] = [
        Some(&f.given_name),
        Some(&f.family_name),
        Some(&f.gender),
        f.unhcr_number.as_deref(),
        f.middle_names.as_deref(),
        None, // date_of_birth
        None, // estimated_birth_year
        f.place_of_birth.as_deref(),
        f.refugee_status.as_deref(),
        f.origin_country.as_deref(),
        f.current_camp.as_deref(),
        f.camp_section.as_deref(),
        f.phone_number.as_deref(),
        f.email.as_deref(),
        f.primary_language.as_deref(),
        None, // languages_spoken
        f.blood_type.as_deref(),
        None, // allergies
        None, // chronic_conditions
        f.emergency_contact_name.as_deref(),
        f.emergency_contact_phone.as_deref(),
        Some(&f.verification_status),
    ];
    for (i, value) in text.into_iter().enumerate() {
        stmt.raw_bind_parameter(first + i, value)?;
    }
    stmt.raw_bind_parameter(first + 5, f.date_of_birth.map(Day))?;
    stmt.raw_bind_parameter(first + 6, f.estimated_birth_year)?;
    stmt.raw_bind_parameter(first + 15, list_to_text(&f.languages_spoken))?;
    stmt.raw_bind_parameter(first + 17, list_to_text(&f.allergies))?;
    stmt.raw_bind_parameter(first + 18, list_to_text(&f.chronic_conditions))?;
    Ok(())
}

/// Inserts new patients, one prepared statement stepped per patient.
pub async fn insert_patients(conn: &mut SqliteConnection, patients: &[Patient]) -> StoreResult<()> {
    if patients.is_empty() {
        return Ok(());
    }
    with_raw(conn, |db| {
        let mut stmt = db.prepare(&numbered(&format!(
            "INSERT INTO patients ({}) VALUES ({})",
            super::sql::PATIENT_COLUMNS,
            super::sql::PATIENT_PLACEHOLDERS
        )))?;
        for p in patients {
            stmt.raw_bind_parameter(1, Id(p.id))?;
            stmt.raw_bind_parameter(2, Id(p.organization_id))?;
            bind_fields(&mut stmt, 3, &p.fields)?;
            stmt.raw_bind_parameter(25, Time(p.created_at))?;
            stmt.raw_bind_parameter(26, Time(p.updated_at))?;
            stmt.raw_bind_parameter(27, p.version)?;
            stmt.raw_bind_parameter(28, p.deleted_at.map(Time))?;
            stmt.raw_bind_parameter(29, p.import_operation_id.map(Id))?;
            stmt.raw_execute()?;
        }
        Ok(())
    })
    .await
}

/// The before-images of a chunk's writes, one prepared statement stepped per image. A
/// patient backed up already by this operation keeps its first image.
pub async fn insert_backups(
    conn: &mut SqliteConnection,
    operation_id: Uuid,
    writes: &[super::ops::PatientWrite],
    now: DateTime<Utc>,
) -> StoreResult<()> {
    if writes.iter().all(|w| w.backup.is_none()) {
        return Ok(());
    }
    with_raw(conn, |db| {
        let mut stmt = db.prepare(
            "INSERT INTO operation_backups (operation_id, patient_id, version_after, before_image, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (operation_id, patient_id) DO NOTHING",
        )?;
        let now = Time(now);
        for write in writes {
            let Some(image) = &write.backup else { continue };
            stmt.raw_bind_parameter(1, Id(operation_id))?;
            stmt.raw_bind_parameter(5, &now)?;
            stmt.raw_bind_parameter(2, Id(write.patient_id))?;
            stmt.raw_bind_parameter(3, write.expected_version + 1)?;
            stmt.raw_bind_parameter(4, image.as_slice())?;
            stmt.raw_execute()?;
        }
        Ok(())
    })
    .await
}

/// Writes each patient's new state if its version is still the expected one, setting
/// the `written` columns only; the first patient whose version moved on is returned
/// (the caller rolls back).
pub async fn write_patients(
    conn: &mut SqliteConnection,
    org: Uuid,
    writes: &[super::ops::PatientWrite],
    written: &WrittenColumns,
    now: DateTime<Utc>,
) -> StoreResult<Option<Uuid>> {
    if writes.is_empty() {
        return Ok(None);
    }
    // ?1 id, ?2 organization, ?3 expected version, ?4 now, then the written columns
    // (their names are `WRITABLE_FIELDS` constants, never input).
    let mut set = String::new();
    for (i, field) in written.fields.iter().enumerate() {
        set.push_str(&format!("{field} = ?{}, ", i + 5));
    }
    let deleted_at = written.fields.len() + 5;
    if written.deleted_at {
        set.push_str(&format!("deleted_at = ?{deleted_at}, "));
    }
    let sql = format!(
        "UPDATE patients SET {set}version = version + 1, updated_at = ?4 \
         WHERE id = ?1 AND organization_id = ?2 AND version = ?3"
    );
    with_raw(conn, |db| {
        let mut stmt = db.prepare(&sql)?;
        stmt.raw_bind_parameter(2, Id(org))?;
        stmt.raw_bind_parameter(4, Time(now))?;
        for write in writes {
            stmt.raw_bind_parameter(1, Id(write.patient_id))?;
            stmt.raw_bind_parameter(3, write.expected_version)?;
            for (i, field) in written.fields.iter().enumerate() {
                stmt.raw_bind_parameter(i + 5, write.fields.field(field))?;
            }
            if written.deleted_at {
                stmt.raw_bind_parameter(deleted_at, write.deleted_at.map(Time))?;
            }
            if stmt.raw_execute()? != 1 {
                return Ok(Some(write.patient_id));
            }
        }
        Ok(None)
    })
    .await
}

impl ToSql for FieldRef<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            FieldRef::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            FieldRef::OptText(Some(t)) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            FieldRef::OptText(None) | FieldRef::Date(None) | FieldRef::Int(None) => {
                ToSqlOutput::Owned(Value::Null)
            }
            FieldRef::Date(Some(day)) => day_text(day),
            FieldRef::Int(Some(n)) => ToSqlOutput::Owned(Value::Integer(n)),
            FieldRef::List(items) => ToSqlOutput::Owned(Value::Text(list_to_text(items))),
        })
    }
}

/// One row of a direct query, read by position.
struct DirectRow<'a, 'stmt>(&'a rusqlite::Row<'stmt>);

impl DirectRow<'_, '_> {
    fn text_ref(&self, i: usize) -> StoreResult<Option<&str>> {
        match self.0.get_ref(i).map_err(store_error)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(bytes) => std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| corrupt(i, "text that is not UTF-8")),
            _ => Err(corrupt(i, "a value that is not text")),
        }
    }
}

fn corrupt(column: usize, what: &str) -> StoreError {
    StoreError::Corrupt(format!("column {column} holds {what}"))
}

impl ColumnRead for DirectRow<'_, '_> {
    fn text(&self, i: usize) -> StoreResult<Option<String>> {
        Ok(self.text_ref(i)?.map(str::to_owned))
    }

    fn id(&self, i: usize) -> StoreResult<Option<Uuid>> {
        match self.0.get_ref(i).map_err(store_error)? {
            ValueRef::Null => Ok(None),
            ValueRef::Blob(bytes) => Uuid::from_slice(bytes)
                .map(Some)
                .map_err(|_| corrupt(i, "a blob that is not a UUID")),
            _ => Err(corrupt(i, "a value that is not a UUID")),
        }
    }

    fn int(&self, i: usize) -> StoreResult<Option<i64>> {
        match self.0.get_ref(i).map_err(store_error)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(n) => Ok(Some(n)),
            _ => Err(corrupt(i, "a value that is not an integer")),
        }
    }

    fn date(&self, i: usize) -> StoreResult<Option<NaiveDate>> {
        self.text_ref(i)?
            .map(|t| NaiveDate::parse_from_str(t, "%F").map_err(|_| corrupt(i, "a bad date")))
            .transpose()
    }

    fn time(&self, i: usize) -> StoreResult<Option<DateTime<Utc>>> {
        self.text_ref(i)?
            .map(|t| {
                // What sqlx writes (RFC 3339); SQLite's own `datetime()` as a fallback.
                DateTime::parse_from_rfc3339(t)
                    .map(|t| t.with_timezone(&Utc))
                    .or_else(|_| {
                        chrono::NaiveDateTime::parse_from_str(t, "%F %T%.f").map(|t| t.and_utc())
                    })
                    .map_err(|_| corrupt(i, "a bad time"))
            })
            .transpose()
    }
}

/// `SELECT id, <columns> FROM patients WHERE <the scan's conditions>` with `?`
/// placeholders, and the values they take.
fn scan_sql(
    scan: &super::ops::PatientScan<'_>,
    columns: &[&'static str],
) -> (String, Vec<FilterValue>) {
    let mut sql = String::from("SELECT id");
    for column in columns {
        sql.push_str(", ");
        sql.push_str(column);
    }
    sql.push_str(" FROM patients WHERE organization_id = ?");
    let mut params = vec![FilterValue::Id(scan.org)];
    if !scan.include_deleted {
        sql.push_str(" AND deleted_at IS NULL");
    }
    if let Some(op) = scan.imported_by {
        sql.push_str(" AND import_operation_id = ?");
        params.push(FilterValue::Id(op));
    }
    for clause in super::sql::filter_clauses(scan.filters) {
        if clause.op == "IN" {
            if clause.values.is_empty() {
                sql.push_str(" AND 1 = 0");
                continue;
            }
            let marks = vec!["?"; clause.values.len()].join(", ");
            sql.push_str(&format!(" AND {} IN ({marks})", clause.column));
        } else {
            sql.push_str(&format!(" AND {} {} ?", clause.column, clause.op));
        }
        params.extend(clause.values);
    }
    (sql, params)
}

/// One page of the scanned patients (`id > page.after`, by id, at most `page.limit`),
/// every column, read on a blocking thread from a pooled read connection.
pub async fn scan_patients(
    pool: &sqlx::SqlitePool,
    scan: super::ops::PatientScan<'_>,
) -> StoreResult<Vec<Patient>> {
    let columns = all_columns();
    let (mut sql, mut params) = scan_sql(&scan, &columns);
    if let Some(after) = scan.page.after {
        sql.push_str(" AND id > ?");
        params.push(FilterValue::Id(after));
    }
    // A number from the engine, not from a request.
    sql.push_str(&format!(" ORDER BY id LIMIT {}", scan.page.limit.max(0)));
    query_patients(pool, sql, params, columns, scan.org).await
}

/// Every column of `patients`, `id` first, as [`super::sql::PATIENT_COLUMNS`] lists them.
fn all_columns() -> Vec<&'static str> {
    super::sql::PATIENT_COLUMNS
        .split(',')
        .map(str::trim)
        .filter(|c| *c != "id")
        .collect()
}

/// Patients by id, deleted or not, within the organization.
pub async fn patients_by_id(
    pool: &sqlx::SqlitePool,
    org: Uuid,
    ids: &[Uuid],
) -> StoreResult<Vec<Patient>> {
    let columns = all_columns();
    let marks = vec!["?"; ids.len()].join(", ");
    let sql = format!(
        "SELECT id, {} FROM patients WHERE organization_id = ? AND id IN ({marks}) ORDER BY id",
        columns.join(", ")
    );
    let mut params = vec![FilterValue::Id(org)];
    params.extend(ids.iter().copied().map(FilterValue::Id));
    query_patients(pool, sql, params, columns, org).await
}

/// Runs a `SELECT id, <columns> …` on a blocking thread from a pooled read connection
/// and decodes every row.
async fn query_patients(
    pool: &sqlx::SqlitePool,
    sql: String,
    params: Vec<FilterValue>,
    columns: Vec<&'static str>,
    org: Uuid,
) -> StoreResult<Vec<Patient>> {
    read_blocking(pool, move |db| {
        let mut stmt = db.prepare(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
        let mut page = Vec::new();
        while let Some(row) = rows.next()? {
            page.push(super::sql::patient_from_columns(
                &DirectRow(row),
                &columns,
                org,
            ));
        }
        Ok(page)
    })
    .await?
    .into_iter()
    .collect()
}

/// A page of an operation's before-images, by patient id.
pub async fn backups(
    pool: &sqlx::SqlitePool,
    operation_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> StoreResult<Vec<super::ops::Backup>> {
    let mut sql = String::from(
        "SELECT patient_id, version_after, before_image FROM operation_backups \
         WHERE operation_id = ?1 AND patient_id > ?2 ORDER BY patient_id LIMIT ?3",
    );
    if after.is_none() {
        sql = sql.replace("AND patient_id > ?2 ", "AND ?2 IS NULL ");
    }
    read_blocking(pool, move |db| {
        let mut stmt = db.prepare(&sql)?;
        let mut rows = stmt.query((Id(operation_id), after.map(Id), limit))?;
        let mut page = Vec::new();
        while let Some(row) = rows.next()? {
            let patient_id = DirectRow(row).id(0);
            let version_after: i64 = row.get(1)?;
            let before_image: Vec<u8> = row.get(2)?;
            page.push(patient_id.and_then(|id| {
                Ok(super::ops::Backup {
                    patient_id: id.ok_or_else(|| corrupt(0, "NULL"))?,
                    version_after,
                    before_image,
                })
            }));
        }
        Ok(page)
    })
    .await?
    .into_iter()
    .collect()
}

/// Runs `work` on a pooled read connection's raw handle, on a blocking thread.
async fn read_blocking<T: Send + 'static>(
    pool: &sqlx::SqlitePool,
    work: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> StoreResult<T> {
    let mut conn = pool.acquire().await?;
    tokio::task::spawn_blocking(move || {
        let mut handle = futures::executor::block_on(conn.lock_handle())?;
        run_raw(&mut handle, work)
    })
    .await
    .map_err(|e| StoreError::Database(sqlx::Error::Io(std::io::Error::other(e))))?
}

/// Streams `SELECT id, <columns> FROM patients WHERE …` of one organization in
/// pages of `batch`, read on a blocking thread from a pooled read connection: one
/// statement, one snapshot. Ends when the receiver is dropped.
pub fn stream_patients(
    pool: sqlx::SqlitePool,
    scan: super::ops::PatientScan<'_>,
    columns: Vec<&'static str>,
    batch: usize,
) -> tokio::sync::mpsc::Receiver<StoreResult<Vec<Patient>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let org = scan.org;
    let (mut sql, params) = scan_sql(&scan, &columns);
    sql.push_str(" ORDER BY id");
    tokio::spawn(async move {
        let conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let reader = tokio::task::spawn_blocking(move || {
            let mut conn = conn;
            let result = futures::executor::block_on(conn.lock_handle())
                .map_err(StoreError::from)
                .and_then(|mut handle| {
                    run_raw(&mut handle, |db| {
                        let mut stmt = db.prepare(&sql)?;
                        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
                        let mut page = Vec::with_capacity(batch);
                        while let Some(row) = rows.next()? {
                            match super::sql::patient_from_columns(&DirectRow(row), &columns, org) {
                                Ok(p) => page.push(p),
                                Err(e) => return Ok(Err(e)),
                            }
                            if page.len() >= batch {
                                let full = std::mem::replace(&mut page, Vec::with_capacity(batch));
                                if tx.blocking_send(Ok(full)).is_err() {
                                    return Ok(Ok(()));
                                }
                            }
                        }
                        if !page.is_empty() {
                            let _ = tx.blocking_send(Ok(page));
                        }
                        Ok(Ok(()))
                    })
                })
                .and_then(|inner| inner);
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let _ = reader.await;
    });
    rx
}
