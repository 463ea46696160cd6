//! The schedule SQL, shared by both backends like `sql.rs` (see there for why a macro).

pub const SCHEDULE_COLUMNS: &str = "id, organization_id, user_id, name, cron, timezone, \
    operation_type, operation, enabled, missed, next_run_at, created_at, updated_at";

macro_rules! schedules_store_impl {
    ($store:ty, $db:ty, $row:ty) => {
        impl $store {
            fn schedule_from_row(row: &$row) -> $crate::store::StoreResult<$crate::domain::schedule::Schedule> {
                use sqlx::Row;
                use $crate::store::StoreError;
                let op_type: String = row.try_get("operation_type")?;
                let missed: String = row.try_get("missed")?;
                Ok($crate::domain::schedule::Schedule {
                    id: row.try_get("id")?,
                    organization_id: row.try_get("organization_id")?,
                    user_id: row.try_get("user_id")?,
                    name: row.try_get("name")?,
                    cron: row.try_get("cron")?,
                    timezone: row.try_get("timezone")?,
                    operation_type: $crate::domain::operation::OperationType::parse(&op_type)
                        .ok_or_else(|| StoreError::Corrupt(format!("schedule operation type {op_type}")))?,
                    sealed_operation: row.try_get("operation")?,
                    enabled: row.try_get("enabled")?,
                    missed: $crate::domain::schedule::Missed::parse(&missed)
                        .ok_or_else(|| StoreError::Corrupt(format!("schedule missed policy {missed}")))?,
                    next_run_at: row.try_get("next_run_at")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::schedules::ScheduleStore for $store {
            async fn create_schedule(
                &self,
                s: &$crate::domain::schedule::Schedule,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                sqlx::query(
                    "INSERT INTO bulk_schedules (id, organization_id, user_id, name, cron, timezone, operation_type, \
                     operation, enabled, missed, next_run_at, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(s.id)
                .bind(s.organization_id)
                .bind(s.user_id)
                .bind(&s.name)
                .bind(&s.cron)
                .bind(&s.timezone)
                .bind(s.operation_type.as_str())
                .bind(&s.sealed_operation)
                .bind(s.enabled)
                .bind(s.missed.as_str())
                .bind(s.next_run_at)
                .bind(s.created_at)
                .bind(s.updated_at)
                .execute(&mut *tx)
                .await?;
                Self::append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_schedule(
                &self,
                org: uuid::Uuid,
                id: uuid::Uuid,
            ) -> $crate::store::StoreResult<Option<$crate::domain::schedule::Schedule>> {
                let sql = format!(
                    "SELECT {} FROM bulk_schedules WHERE id = $1 AND organization_id = $2",
                    $crate::store::schedules_sql::SCHEDULE_COLUMNS
                );
                let row = sqlx::query(&sql).bind(id).bind(org).fetch_optional(self.reader()).await?;
                row.as_ref().map(Self::schedule_from_row).transpose()
            }

            async fn list_schedules(
                &self,
                org: uuid::Uuid,
                page: &$crate::store::Page,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::schedule::Schedule>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM bulk_schedules WHERE organization_id = ",
                    $crate::store::schedules_sql::SCHEDULE_COLUMNS
                ));
                qb.push_bind(org);
                if let Some(after) = page.after {
                    qb.push(" AND id < ").push_bind(after);
                }
                qb.push(" ORDER BY id DESC LIMIT ").push_bind(page.limit);
                let rows = qb.build().fetch_all(self.reader()).await?;
                rows.iter().map(Self::schedule_from_row).collect()
            }

            async fn update_schedule(
                &self,
                s: &$crate::domain::schedule::Schedule,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                let done = sqlx::query(
                    "UPDATE bulk_schedules SET name = $3, cron = $4, timezone = $5, operation_type = $6, operation = $7, \
                     enabled = $8, missed = $9, next_run_at = $10, updated_at = $11 WHERE id = $1 AND organization_id = $2",
                )
                .bind(s.id)
                .bind(s.organization_id)
                .bind(&s.name)
                .bind(&s.cron)
                .bind(&s.timezone)
                .bind(s.operation_type.as_str())
                .bind(&s.sealed_operation)
                .bind(s.enabled)
                .bind(s.missed.as_str())
                .bind(s.next_run_at)
                .bind(s.updated_at)
                .execute(&mut *tx)
                .await?;
                Self::commit_audited_if_found(tx, done.rows_affected(), audit).await
            }

            async fn delete_schedule(
                &self,
                org: uuid::Uuid,
                id: uuid::Uuid,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                let done = sqlx::query("DELETE FROM bulk_schedules WHERE id = $1 AND organization_id = $2")
                    .bind(id)
                    .bind(org)
                    .execute(&mut *tx)
                    .await?;
                Self::commit_audited_if_found(tx, done.rows_affected(), audit).await
            }

            async fn due_schedules(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::schedule::Schedule>> {
                let sql = format!(
                    "SELECT {} FROM bulk_schedules WHERE enabled = TRUE AND next_run_at <= $1 \
                     ORDER BY next_run_at LIMIT $2",
                    $crate::store::schedules_sql::SCHEDULE_COLUMNS
                );
                let rows = sqlx::query(&sql).bind(now).bind(limit).fetch_all(self.reader()).await?;
                rows.iter().map(Self::schedule_from_row).collect()
            }

            async fn next_schedule_at(&self) -> $crate::store::StoreResult<Option<chrono::DateTime<chrono::Utc>>> {
                let (at,): (Option<chrono::DateTime<chrono::Utc>>,) =
                    sqlx::query_as("SELECT MIN(next_run_at) FROM bulk_schedules WHERE enabled = TRUE")
                        .fetch_one(self.reader())
                        .await?;
                Ok(at)
            }

            async fn advance_schedule(
                &self,
                id: uuid::Uuid,
                expected: chrono::DateTime<chrono::Utc>,
                next: Option<chrono::DateTime<chrono::Utc>>,
            ) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE bulk_schedules SET next_run_at = $3 WHERE id = $1 AND next_run_at = $2",
                )
                .bind(id)
                .bind(expected)
                .bind(next)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn fire_schedule(
                &self,
                op: &$crate::domain::operation::Operation,
                occurrence: chrono::DateTime<chrono::Utc>,
                expected: chrono::DateTime<chrono::Utc>,
                next: Option<chrono::DateTime<chrono::Utc>>,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<bool> {
                let Some(schedule) = op.schedule_id else {
                    return Ok(false);
                };
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                // Whoever moves `next_run_at` on handles the occurrence; the others
                // find it moved and do nothing.
                let moved = sqlx::query(
                    "UPDATE bulk_schedules SET next_run_at = $3 WHERE id = $1 AND next_run_at = $2",
                )
                .bind(schedule)
                .bind(expected)
                .bind(next)
                .execute(&mut *tx)
                .await?;
                if moved.rows_affected() != 1 {
                    return Ok(false);
                }
                Self::insert_operation_tx(&mut tx, op, audit).await?;
                // The unique key on (schedule_id, occurrence_at) makes a second
                // operation for one occurrence impossible, whatever happened above.
                let marked = sqlx::query("UPDATE bulk_operations SET occurrence_at = $2 WHERE id = $1")
                    .bind(op.id)
                    .bind(occurrence)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::store::sql::classify);
                match marked {
                    Ok(_) => {}
                    Err($crate::store::StoreError::Duplicate(_)) => return Ok(false),
                    Err(e) => return Err(e),
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn schedule_operations(
                &self,
                org: uuid::Uuid,
                schedule: uuid::Uuid,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::operation::Operation>> {
                let sql = format!(
                    "SELECT {} FROM bulk_operations WHERE organization_id = $1 AND schedule_id = $2 \
                     ORDER BY id DESC LIMIT $3",
                    $crate::store::ops_sql::OPERATION_COLUMNS
                );
                let rows = sqlx::query(&sql)
                    .bind(org)
                    .bind(schedule)
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?;
                self.operations_with_deps(rows).await
            }

            async fn user_role(
                &self,
                org: uuid::Uuid,
                user: uuid::Uuid,
            ) -> $crate::store::StoreResult<Option<$crate::domain::permission::Role>> {
                let row: Option<(String,)> =
                    sqlx::query_as("SELECT role FROM users WHERE id = $1 AND organization_id = $2")
                        .bind(user)
                        .bind(org)
                        .fetch_optional(self.reader())
                        .await?;
                Ok(row.and_then(|(r,)| $crate::domain::permission::Role::parse(&r)))
            }

            async fn claim_internal_job(
                &self,
                name: &str,
                worker: &str,
                now: chrono::DateTime<chrono::Utc>,
                next: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                sqlx::query(
                    "INSERT INTO internal_jobs (name, next_run_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let done = sqlx::query(
                    "UPDATE internal_jobs SET next_run_at = $3, last_run_by = $4 WHERE name = $1 AND next_run_at <= $2",
                )
                .bind(name)
                .bind(now)
                .bind(next)
                .bind(worker)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(done.rows_affected() == 1)
            }
        }
    };
}
