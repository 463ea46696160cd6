//! The engine's SQL, shared by both backends like `sql.rs` (see there for why a macro).

/// Columns of `bulk_operations` read into an [`crate::domain::operation::Operation`].
pub const OPERATION_COLUMNS: &str = "id, type, status, user_id, organization_id, scheduled_at, \
    started_at, completed_at, created_at, parameters, parameters_key_id, result, error_message, \
    timezone, email_notification, dry_run, schedule_id, target_operation_id, idempotency_key, \
    attempt, lease_expires_at, next_attempt_at, cancel_requested, progress_processed, \
    progress_total, progress_cursor, failures, undo_reason, undo_message";

/// Due operations not blocked by an unfinished dependency, oldest first: the window
/// a claim picks from (`$1` the database's time, `$2` the window's size). Served by the
/// partial indexes on scheduled operations and on leases (migration 0004).
pub const CLAIM_CANDIDATES: &str = "SELECT o.id, o.organization_id FROM bulk_operations o \
    WHERE ((o.status = 'scheduled' AND o.scheduled_at <= $1 \
            AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= $1)) \
        OR (o.status = 'processing' AND o.lease_expires_at < $1)) \
      AND NOT EXISTS (SELECT 1 FROM operation_dependencies d \
            JOIN bulk_operations p ON p.id = d.depends_on_id \
            WHERE d.operation_id = o.id AND p.status <> 'completed') \
    ORDER BY o.scheduled_at, o.id LIMIT $2";

/// Operations running now (a live lease), by organization.
pub const RUNNING_BY_ORG: &str = "SELECT organization_id, COUNT(*) FROM bulk_operations \
    WHERE status = 'processing' AND lease_expires_at >= $1 GROUP BY organization_id";

/// How many candidates a claim looks at: enough to find work for every free slot
/// across organizations at their limit.
pub const CLAIM_WINDOW: i64 = 1000;

/// Orders due candidates fairly: each organization's k-th candidate ranks by
/// (operations it runs now + k), so one organization's hundred operations
/// interleave with another's one; an organization at `max_per_org` gets none.
/// Ties keep the oldest-first order of `candidates`.
pub fn fair_pick(
    candidates: &[(uuid::Uuid, uuid::Uuid)],
    running: &std::collections::HashMap<uuid::Uuid, i64>,
    max_per_org: i64,
    want: usize,
) -> Vec<(uuid::Uuid, uuid::Uuid)> {
    let mut seen: std::collections::HashMap<uuid::Uuid, i64> = std::collections::HashMap::new();
    let mut ranked: Vec<(i64, usize, (uuid::Uuid, uuid::Uuid))> = Vec::new();
    for (position, &(id, org)) in candidates.iter().enumerate() {
        let k = seen.entry(org).or_insert(0);
        *k += 1;
        let load = running.get(&org).copied().unwrap_or(0) + *k;
        if load <= max_per_org {
            ranked.push((load, position, (id, org)));
        }
    }
    ranked.sort();
    ranked.into_iter().take(want).map(|(_, _, c)| c).collect()
}

macro_rules! ops_store_impl {
    ($store:ty, $db:ty, $row:ty) => {
        impl $store {
            fn operation_from_row(row: &$row) -> $crate::store::StoreResult<$crate::domain::operation::Operation> {
                use sqlx::Row;
                use $crate::domain::operation::{OperationType, Status};
                use $crate::store::StoreError;
                let op_type: String = row.try_get("type")?;
                let status: String = row.try_get("status")?;
                let result: Option<String> = row.try_get("result")?;
                Ok($crate::domain::operation::Operation {
                    id: row.try_get("id")?,
                    op_type: OperationType::parse(&op_type)
                        .ok_or_else(|| StoreError::Corrupt(format!("operation type {op_type}")))?,
                    status: Status::parse(&status)
                        .ok_or_else(|| StoreError::Corrupt(format!("operation status {status}")))?,
                    user_id: row.try_get("user_id")?,
                    organization_id: row.try_get("organization_id")?,
                    scheduled_at: row.try_get("scheduled_at")?,
                    started_at: row.try_get("started_at")?,
                    completed_at: row.try_get("completed_at")?,
                    created_at: row.try_get("created_at")?,
                    parameters: row.try_get("parameters")?,
                    parameters_key_id: row.try_get("parameters_key_id")?,
                    result: result
                        .map(|r| serde_json::from_str(&r))
                        .transpose()
                        .map_err(|e| StoreError::Corrupt(format!("operation result: {e}")))?,
                    error_message: row.try_get("error_message")?,
                    timezone: row.try_get("timezone")?,
                    email_notification: row.try_get("email_notification")?,
                    dry_run: row.try_get("dry_run")?,
                    schedule_id: row.try_get("schedule_id")?,
                    target_operation_id: row.try_get("target_operation_id")?,
                    idempotency_key: row.try_get("idempotency_key")?,
                    attempt: row.try_get("attempt")?,
                    lease_expires_at: row.try_get("lease_expires_at")?,
                    next_attempt_at: row.try_get("next_attempt_at")?,
                    cancel_requested: row.try_get("cancel_requested")?,
                    progress_processed: row.try_get("progress_processed")?,
                    progress_total: row.try_get("progress_total")?,
                    progress_cursor: row.try_get("progress_cursor")?,
                    failures: row.try_get("failures")?,
                    undo_reason: row.try_get("undo_reason")?,
                    undo_message: row.try_get("undo_message")?,
                    depends_on: Vec::new(),
                })
            }

            /// Reads operations and fills in their dependencies with one more query.
            async fn operations_with_deps(
                &self,
                rows: Vec<$row>,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::operation::Operation>> {
                let mut ops: Vec<_> = rows.iter().map(Self::operation_from_row).collect::<Result<_, _>>()?;
                if ops.is_empty() {
                    return Ok(ops);
                }
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT operation_id, depends_on_id FROM operation_dependencies WHERE operation_id IN (",
                );
                let mut list = qb.separated(", ");
                for op in &ops {
                    list.push_bind(op.id);
                }
                qb.push(") ORDER BY depends_on_id");
                let deps: Vec<(uuid::Uuid, uuid::Uuid)> = qb.build_query_as().fetch_all(self.reader()).await?;
                for (op_id, dep) in deps {
                    if let Some(op) = ops.iter_mut().find(|o| o.id == op_id) {
                        op.depends_on.push(dep);
                    }
                }
                Ok(ops)
            }

            async fn fetch_operation_where(
                &self,
                condition: &str,
                id: uuid::Uuid,
                org: Option<uuid::Uuid>,
            ) -> $crate::store::StoreResult<Option<$crate::domain::operation::Operation>> {
                let sql = format!(
                    "SELECT {} FROM bulk_operations WHERE {condition}{}",
                    $crate::store::ops_sql::OPERATION_COLUMNS,
                    if org.is_some() { " AND organization_id = $2" } else { "" }
                );
                let mut query = sqlx::query(&sql).bind(id);
                if let Some(org) = org {
                    query = query.bind(org);
                }
                let rows = query.fetch_all(self.reader()).await?;
                Ok(self.operations_with_deps(rows).await?.into_iter().next())
            }

            /// Tells the engines of other processes that the queue changed (delivered on
            /// commit). A hint only: polling remains the guarantee.
            async fn notify_engines(tx: &mut sqlx::Transaction<'_, $db>) -> $crate::store::StoreResult<()> {
                if !Self::DIALECT.notify_queue.is_empty() {
                    sqlx::query(Self::DIALECT.notify_queue).execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Inserts a scheduled operation, its dependencies, its audit entry and its
            /// `operation.scheduled` event in the caller's transaction.
            async fn insert_operation_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                op: &$crate::domain::operation::Operation,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO bulk_operations (id, type, status, user_id, organization_id, scheduled_at, \
                     created_at, parameters, parameters_key_id, timezone, email_notification, dry_run, \
                     schedule_id, target_operation_id, idempotency_key, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $7)",
                )
                .bind(op.id)
                .bind(op.op_type.as_str())
                .bind(op.status.as_str())
                .bind(op.user_id)
                .bind(op.organization_id)
                .bind(op.scheduled_at)
                .bind(op.created_at)
                .bind(&op.parameters)
                .bind(&op.parameters_key_id)
                .bind(&op.timezone)
                .bind(op.email_notification)
                .bind(op.dry_run)
                .bind(op.schedule_id)
                .bind(op.target_operation_id)
                .bind(&op.idempotency_key)
                .execute(&mut **tx)
                .await
                .map_err($crate::store::sql::classify)?;
                for dep in &op.depends_on {
                    sqlx::query("INSERT INTO operation_dependencies (operation_id, depends_on_id) VALUES ($1, $2)")
                        .bind(op.id)
                        .bind(dep)
                        .execute(&mut **tx)
                        .await?;
                }
                Self::append_audit_tx(tx, audit).await?;
                Self::emit_event_tx(tx, op.id, $crate::notify::EventType::Scheduled, op.created_at).await?;
                Self::notify_engines(tx).await?;
                Ok(())
            }

            /// The database's clock (PostgreSQL), or this process's once the write lock
            /// is held (SQLite, whose `BEGIN IMMEDIATE` waited for it already).
            async fn db_now(tx: &mut sqlx::Transaction<'_, $db>) -> $crate::store::StoreResult<chrono::DateTime<chrono::Utc>> {
                if Self::DIALECT.clock.is_empty() {
                    return Ok($crate::domain::now());
                }
                let (now,): (chrono::DateTime<chrono::Utc>,) = sqlx::query_as(Self::DIALECT.clock).fetch_one(&mut **tx).await?;
                Ok(now)
            }

            /// Locks the organization's audit head unless another transaction holds it
            /// (a claim writes `operation.start` entries and must not wait); true when
            /// the head is ours or does not exist yet.
            async fn audit_head_free(
                tx: &mut sqlx::Transaction<'_, $db>,
                org: uuid::Uuid,
            ) -> $crate::store::StoreResult<bool> {
                let sql = format!("SELECT seq FROM audit_heads WHERE organization_id = $1{}", Self::DIALECT.skip_locked);
                if sqlx::query(&sql).bind(org).fetch_optional(&mut **tx).await?.is_some() {
                    return Ok(true);
                }
                let exists = sqlx::query("SELECT seq FROM audit_heads WHERE organization_id = $1")
                    .bind(org)
                    .fetch_optional(&mut **tx)
                    .await?;
                Ok(exists.is_none())
            }

            /// Cancels the operations waiting on `roots` (which failed, were cancelled or
            /// rolled back), then those waiting on them, and so on, each with its audit
            /// entry, in the caller's transaction. Returns how many were cancelled.
            async fn cancel_dependants_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                roots: Vec<uuid::Uuid>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<u64> {
                let mut cancelled = 0;
                let mut frontier = roots;
                while !frontier.is_empty() {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "SELECT o.id, o.user_id, o.organization_id, p.id, p.status FROM bulk_operations o \
                         JOIN operation_dependencies d ON d.operation_id = o.id \
                         JOIN bulk_operations p ON p.id = d.depends_on_id \
                         WHERE o.status = 'scheduled' AND o.attempt = 0 \
                         AND p.status IN ('failed', 'cancelled', 'rolled_back') AND d.depends_on_id IN (",
                    );
                    let mut list = qb.separated(", ");
                    for id in &frontier {
                        list.push_bind(*id);
                    }
                    qb.push(") ORDER BY o.id");
                    let orphans: Vec<(uuid::Uuid, uuid::Uuid, uuid::Uuid, uuid::Uuid, String)> =
                        qb.build_query_as().fetch_all(&mut **tx).await?;
                    let mut next = Vec::new();
                    for (id, user, org, dep, dep_status) in orphans {
                        let message = format!("cancelled because the operation it depends on ({dep}) is {dep_status}");
                        let done = sqlx::query(
                            "UPDATE bulk_operations SET status = 'cancelled', error_message = $2, completed_at = $3, \
                             updated_at = $3 WHERE id = $1 AND status = 'scheduled' AND attempt = 0",
                        )
                        .bind(id)
                        .bind(&message)
                        .bind(now)
                        .execute(&mut **tx)
                        .await?;
                        if done.rows_affected() == 1 {
                            Self::append_audit_tx(tx, $crate::store::NewAuditEntry {
                                organization_id: org,
                                user_id: Some(user),
                                action: "operation.cancel".into(),
                                resource_type: "bulk_operation".into(),
                                resource_id: Some(id.to_string()),
                                operation_id: Some(id),
                                client_addr: None,
                                outcome: "success".into(),
                                details: serde_json::json!({"reason": message, "depends_on": dep}).to_string(),
                            })
                            .await?;
                            Self::emit_event_tx(tx, id, $crate::notify::EventType::Cancelled, now).await?;
                            cancelled += 1;
                            next.push(id);
                        }
                    }
                    frontier = next;
                }
                Ok(cancelled)
            }

            fn push_scan(qb: &mut sqlx::QueryBuilder<'_, $db>, scan: &$crate::store::ops::PatientScan<'_>) {
                qb.push(" FROM patients WHERE organization_id = ").push_bind(scan.org);
                if !scan.include_deleted {
                    qb.push(" AND deleted_at IS NULL");
                }
                if let Some(op) = scan.imported_by {
                    qb.push(" AND import_operation_id = ").push_bind(op);
                }
                Self::push_filters(qb, scan.filters);
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::ops::OpsStore for $store {
            async fn insert_operation(
                &self,
                op: &$crate::domain::operation::Operation,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                Self::insert_operation_tx(&mut tx, op, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn find_by_idempotency_key(
                &self,
                user: uuid::Uuid,
                key: &str,
            ) -> $crate::store::StoreResult<Option<$crate::domain::operation::Operation>> {
                let sql = format!(
                    "SELECT {} FROM bulk_operations WHERE user_id = $1 AND idempotency_key = $2",
                    $crate::store::ops_sql::OPERATION_COLUMNS
                );
                let rows = sqlx::query(&sql).bind(user).bind(key).fetch_all(self.reader()).await?;
                Ok(self.operations_with_deps(rows).await?.into_iter().next())
            }

            async fn clear_idempotency_key(&self, operation_id: uuid::Uuid) -> $crate::store::StoreResult<()> {
                sqlx::query("UPDATE bulk_operations SET idempotency_key = NULL WHERE id = $1")
                    .bind(operation_id)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn get_operation(
                &self,
                org: uuid::Uuid,
                id: uuid::Uuid,
            ) -> $crate::store::StoreResult<Option<$crate::domain::operation::Operation>> {
                self.fetch_operation_where("id = $1", id, Some(org)).await
            }

            async fn list_operations(
                &self,
                org: uuid::Uuid,
                status: Option<$crate::domain::operation::Status>,
                op_type: Option<$crate::domain::operation::OperationType>,
                page: &$crate::store::Page,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::operation::Operation>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM bulk_operations WHERE organization_id = ",
                    $crate::store::ops_sql::OPERATION_COLUMNS
                ));
                qb.push_bind(org);
                if let Some(status) = status {
                    qb.push(" AND status = ").push_bind(status.as_str());
                }
                if let Some(t) = op_type {
                    qb.push(" AND type = ").push_bind(t.as_str());
                }
                if let Some(after) = page.after {
                    qb.push(" AND id < ").push_bind(after);
                }
                qb.push(" ORDER BY id DESC LIMIT ").push_bind(page.limit);
                let rows = qb.build().fetch_all(self.reader()).await?;
                self.operations_with_deps(rows).await
            }

            async fn list_scheduled(
                &self,
                org: uuid::Uuid,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::operation::Operation>> {
                let sql = format!(
                    "SELECT {} FROM bulk_operations WHERE organization_id = $1 AND status = 'scheduled' \
                     ORDER BY scheduled_at, id LIMIT 1000",
                    $crate::store::ops_sql::OPERATION_COLUMNS
                );
                let rows = sqlx::query(&sql).bind(org).fetch_all(self.reader()).await?;
                self.operations_with_deps(rows).await
            }

            async fn count_scheduled(&self, org: uuid::Uuid) -> $crate::store::StoreResult<i64> {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM bulk_operations WHERE organization_id = $1 AND status = 'scheduled'",
                )
                .bind(org)
                .fetch_one(self.reader())
                .await?;
                Ok(n)
            }

            async fn created_by_user_since(
                &self,
                user: uuid::Uuid,
                since: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<(i64, Option<chrono::DateTime<chrono::Utc>>)> {
                Ok(sqlx::query_as(
                    "SELECT COUNT(*), MIN(created_at) FROM bulk_operations WHERE user_id = $1 AND created_at > $2",
                )
                .bind(user)
                .bind(since)
                .fetch_one(self.reader())
                .await?)
            }

            async fn request_cancel(
                &self,
                org: uuid::Uuid,
                id: uuid::Uuid,
                now: chrono::DateTime<chrono::Utc>,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<Option<($crate::domain::operation::Operation, bool)>> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                // A worker paused inside a chunk holds the operation's row; the server
                // ends its transaction after 10 s, and the cancel then goes through
                // instead of failing at its own 10 s lock timeout.
                if !Self::DIALECT.outwait_paused_holder.is_empty() {
                    sqlx::query(Self::DIALECT.outwait_paused_holder).execute(&mut *tx).await?;
                }
                let scheduled = sqlx::query(
                    "UPDATE bulk_operations SET status = 'cancelled', completed_at = $3, updated_at = $3, \
                     error_message = 'cancelled before it started' \
                     WHERE id = $1 AND organization_id = $2 AND status = 'scheduled' AND attempt = 0",
                )
                .bind(id)
                .bind(org)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                // A started rollback is never stopped half-way (a mix of old and new
                // values), and an operation already undoing itself ends as it is undone:
                // both conditions are part of the statement, not read before it.
                let running = sqlx::query(
                    "UPDATE bulk_operations SET cancel_requested = TRUE, updated_at = $3, \
                     next_attempt_at = CASE WHEN status = 'scheduled' THEN $3 ELSE next_attempt_at END \
                     WHERE id = $1 AND organization_id = $2 AND type <> 'rollback' AND undo_reason IS NULL \
                     AND (status = 'processing' OR (status = 'scheduled' AND attempt > 0))",
                )
                .bind(id)
                .bind(org)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let accepted = scheduled.rows_affected() + running.rows_affected() > 0;
                if accepted {
                    Self::append_audit_tx(&mut tx, audit).await?;
                }
                if scheduled.rows_affected() > 0 {
                    Self::emit_event_tx(&mut tx, id, $crate::notify::EventType::Cancelled, now).await?;
                    Self::cancel_dependants_tx(&mut tx, vec![id], now).await?;
                }
                Self::notify_engines(&mut tx).await?;
                tx.commit().await?;
                Ok(self.get_operation(org, id).await?.map(|op| (op, accepted)))
            }

            async fn claim_due(
                &self,
                worker: &str,
                lease: std::time::Duration,
                max_per_org: i64,
                want: usize,
            ) -> $crate::store::StoreResult<$crate::store::ops::Claimed> {
                use $crate::store::ops::Claimed;
                let mut claimed = Claimed::default();
                if want == 0 {
                    return Ok(claimed);
                }
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                let now = Self::db_now(&mut tx).await?;
                let lease_until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30));
                let candidates: Vec<(uuid::Uuid, uuid::Uuid)> = sqlx::query_as($crate::store::ops_sql::CLAIM_CANDIDATES)
                    .bind(now)
                    .bind($crate::store::ops_sql::CLAIM_WINDOW)
                    .fetch_all(&mut *tx)
                    .await?;
                if candidates.is_empty() {
                    tx.commit().await?;
                    return Ok(claimed);
                }
                let running: std::collections::HashMap<uuid::Uuid, i64> = sqlx::query_as($crate::store::ops_sql::RUNNING_BY_ORG)
                    .bind(now)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .collect();
                let picked = $crate::store::ops_sql::fair_pick(&candidates, &running, max_per_org, want);
                // Lock each organization without waiting, then count its running
                // operations again: another process may have claimed for it since the
                // count above (its claim committed before we got the lock).
                let mut orgs: Vec<uuid::Uuid> = picked.iter().map(|(_, org)| *org).collect();
                orgs.sort();
                orgs.dedup();
                let mut room: std::collections::HashMap<uuid::Uuid, i64> = std::collections::HashMap::new();
                for org in orgs {
                    if !Self::DIALECT.org_claim_lock.is_empty() {
                        let (locked,): (bool,) = sqlx::query_as(Self::DIALECT.org_claim_lock)
                            .bind(org)
                            .fetch_one(&mut *tx)
                            .await?;
                        if !locked || !Self::audit_head_free(&mut tx, org).await? {
                            claimed.contended = true;
                            continue;
                        }
                    }
                    let (n,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM bulk_operations WHERE organization_id = $1 \
                         AND status = 'processing' AND lease_expires_at >= $2",
                    )
                    .bind(org)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    room.insert(org, max_per_org - n);
                }
                let mut ids = Vec::new();
                for (id, org) in &picked {
                    if let Some(left) = room.get_mut(org) {
                        if *left > 0 {
                            *left -= 1;
                            ids.push(*id);
                        }
                    }
                }
                if ids.is_empty() {
                    tx.commit().await?;
                    return Ok(claimed);
                }
                // Still due (a cancel or a finish may have committed since the window was
                // read), and not held by another transaction: a row a paused worker
                // holds is skipped, never waited for. A takeover of an expired lease
                // counts as a failed attempt only when that attempt committed nothing.
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "UPDATE bulk_operations SET \
                     failures = failures + CASE WHEN status = 'processing' AND NOT attempt_progressed THEN 1 ELSE 0 END, \
                     status = 'processing', attempt = attempt + 1, attempt_progressed = FALSE, lease_owner = ",
                );
                qb.push_bind(worker.to_string())
                    .push(", lease_expires_at = ")
                    .push_bind(lease_until)
                    .push(", started_at = COALESCE(started_at, ")
                    .push_bind(now)
                    .push("), next_attempt_at = NULL, updated_at = ")
                    .push_bind(now)
                    .push(" WHERE id IN (SELECT id FROM bulk_operations WHERE ((status = 'scheduled' AND scheduled_at <= ")
                    .push_bind(now)
                    .push(" AND (next_attempt_at IS NULL OR next_attempt_at <= ")
                    .push_bind(now)
                    .push(")) OR (status = 'processing' AND lease_expires_at < ")
                    .push_bind(now)
                    .push(")) AND id IN (");
                let mut list = qb.separated(", ");
                for id in &ids {
                    list.push_bind(*id);
                }
                qb.push(format!("){}) RETURNING {}", Self::DIALECT.skip_locked, $crate::store::ops_sql::OPERATION_COLUMNS));
                let rows = qb.build().fetch_all(&mut *tx).await?;
                if rows.len() < ids.len() {
                    claimed.contended = true;
                }
                let ops: Vec<_> = rows.iter().map(Self::operation_from_row).collect::<Result<_, _>>()?;
                // The start is in the trail exactly when the claim is in the table.
                for op in &ops {
                    let entry = $crate::store::NewAuditEntry::for_operation(
                        op,
                        "operation.start",
                        "success",
                        serde_json::json!({"attempt": op.attempt, "failures": op.failures}),
                    );
                    Self::append_audit_tx(&mut tx, entry).await?;
                    if op.attempt == 1 {
                        Self::emit_event_tx(&mut tx, op.id, $crate::notify::EventType::Started, now).await?;
                    }
                }
                tx.commit().await?;
                claimed.operations = self.operations_with_deps(rows).await?;
                Ok(claimed)
            }

            async fn queue_counts(
                &self,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<(Vec<(String, String, i64)>, i64, i64)> {
                let counts: Vec<(String, String, i64)> = sqlx::query_as(
                    "SELECT type, status, COUNT(*) FROM bulk_operations GROUP BY type, status ORDER BY type, status",
                )
                .fetch_all(self.reader())
                .await?;
                let (due,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM bulk_operations WHERE status = 'scheduled' AND scheduled_at <= $1",
                )
                .bind(now)
                .fetch_one(self.reader())
                .await?;
                let (waiting,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM bulk_operations WHERE status = 'scheduled' AND scheduled_at > $1",
                )
                .bind(now)
                .fetch_one(self.reader())
                .await?;
                Ok((counts, due, waiting))
            }

            async fn operation_stats_rows(
                &self,
                org: uuid::Uuid,
                since: chrono::DateTime<chrono::Utc>,
                limit: i64,
            ) -> $crate::store::StoreResult<
                Vec<(String, String, Option<chrono::DateTime<chrono::Utc>>, Option<chrono::DateTime<chrono::Utc>>, i64)>,
            > {
                Ok(sqlx::query_as(
                    "SELECT type, status, started_at, completed_at, progress_processed FROM bulk_operations \
                     WHERE organization_id = $1 AND created_at >= $2 ORDER BY id DESC LIMIT $3",
                )
                .bind(org)
                .bind(since)
                .bind(limit)
                .fetch_all(self.reader())
                .await?)
            }

            async fn next_due_at(&self) -> $crate::store::StoreResult<Option<chrono::DateTime<chrono::Utc>>> {
                type T = Option<chrono::DateTime<chrono::Utc>>;
                let (a,): (T,) = sqlx::query_as(
                    "SELECT MIN(scheduled_at) FROM bulk_operations WHERE status = 'scheduled' AND next_attempt_at IS NULL",
                )
                .fetch_one(self.reader())
                .await?;
                let (b,): (T,) = sqlx::query_as(
                    "SELECT MIN(next_attempt_at) FROM bulk_operations WHERE status = 'scheduled' AND next_attempt_at IS NOT NULL",
                )
                .fetch_one(self.reader())
                .await?;
                let (c,): (T,) = sqlx::query_as(
                    "SELECT MIN(lease_expires_at) FROM bulk_operations WHERE status = 'processing'",
                )
                .fetch_one(self.reader())
                .await?;
                Ok([a, b, c].into_iter().flatten().min())
            }

            async fn cancel_orphaned_dependents(
                &self,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<u64> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                let roots: Vec<(uuid::Uuid,)> = sqlx::query_as(
                    "SELECT DISTINCT d.depends_on_id FROM operation_dependencies d \
                     JOIN bulk_operations o ON o.id = d.operation_id \
                     JOIN bulk_operations p ON p.id = d.depends_on_id \
                     WHERE o.status = 'scheduled' AND o.attempt = 0 \
                     AND p.status IN ('failed', 'cancelled', 'rolled_back')",
                )
                .fetch_all(&mut *tx)
                .await?;
                let n = Self::cancel_dependants_tx(&mut tx, roots.into_iter().map(|(id,)| id).collect(), now).await?;
                tx.commit().await?;
                Ok(n)
            }

            async fn heartbeat(
                &self,
                id: uuid::Uuid,
                attempt: i64,
                lease: std::time::Duration,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                let now = Self::db_now(&mut tx).await?;
                let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30));
                let done = sqlx::query(
                    "UPDATE bulk_operations SET lease_expires_at = $3 \
                     WHERE id = $1 AND attempt = $2 AND status = 'processing'",
                )
                .bind(id)
                .bind(attempt)
                .bind(until)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(done.rows_affected() == 1)
            }

            async fn commit_chunk(
                &self,
                op: &$crate::domain::operation::Operation,
                chunk: $crate::store::ops::Chunk,
            ) -> $crate::store::StoreResult<$crate::store::ops::ChunkOutcome> {
                use $crate::store::ops::ChunkOutcome;
                let now = $crate::domain::now();
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                // The fence first: it also locks the operation row on PostgreSQL, so a
                // takeover waits for this chunk or this chunk finds the lease gone.
                // The same statement moves `progress_event_at` when the last progress
                // event is a second old or more: at most one such event a second.
                let fence: Option<(bool, bool)> = sqlx::query_as(
                    "UPDATE bulk_operations SET progress_processed = $3, progress_total = COALESCE($4, progress_total), \
                     progress_cursor = $5, updated_at = $6, attempt_progressed = TRUE, \
                     undo_reason = COALESCE($7, undo_reason), undo_message = COALESCE($8, undo_message), \
                     progress_event_at = CASE WHEN progress_event_at IS NULL OR progress_event_at <= $9 \
                         THEN $6 ELSE progress_event_at END \
                     WHERE id = $1 AND attempt = $2 AND status = 'processing' \
                     RETURNING cancel_requested, progress_event_at = $6",
                )
                .bind(op.id)
                .bind(op.attempt)
                .bind(chunk.processed)
                .bind(chunk.total)
                .bind(&chunk.cursor)
                .bind(now)
                .bind(chunk.undo.as_ref().map(|u| u.reason.clone()))
                .bind(chunk.undo.as_ref().and_then(|u| u.message.clone()))
                .bind(now - chrono::Duration::seconds(1))
                .fetch_optional(&mut *tx)
                .await?;
                let Some((cancel_requested, progress_due)) = fence else {
                    return Ok(ChunkOutcome::LeaseLost);
                };
                Self::insert_patients(&mut tx, &chunk.inserts).await?;
                let written = chunk.written.clone().unwrap_or_else($crate::store::ops::WrittenColumns::all);
                if let Some(conflict) = Self::write_patients(&mut tx, op.organization_id, &chunk.writes, &written, now).await? {
                    return Ok(ChunkOutcome::Conflict(conflict));
                }
                Self::insert_backups(&mut tx, op.id, &chunk.writes, now).await?;
                let mut removed = 0;
                for batch in chunk.removals.chunks(1000) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new("DELETE FROM patients WHERE organization_id = ");
                    qb.push_bind(op.organization_id);
                    if let Some(version) = chunk.removal_version {
                        qb.push(" AND version = ").push_bind(version);
                    }
                    qb.push(" AND id IN (");
                    let mut list = qb.separated(", ");
                    for id in batch {
                        list.push_bind(*id);
                    }
                    qb.push(")");
                    removed += qb.build().execute(&mut *tx).await?.rows_affected();
                }
                if chunk.removal_version.is_some() && removed != chunk.removals.len() as u64 {
                    // Edited between our read and this delete: nothing is committed.
                    return Ok(ChunkOutcome::Conflict(uuid::Uuid::nil()));
                }
                for batch in chunk.row_errors.chunks(1000) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO operation_row_errors (operation_id, row_number, column_name, code, message) ",
                    );
                    qb.push_values(batch, |mut b, e| {
                        b.push_bind(op.id)
                            .push_bind(e.row)
                            .push_bind(e.column.clone())
                            .push_bind(e.code.clone())
                            .push_bind(e.message.clone());
                    });
                    qb.build().execute(&mut *tx).await?;
                }
                for batch in chunk.conflicts.chunks(1000) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO operation_conflicts (organization_id, operation_id, patient_id, reason) ",
                    );
                    qb.push_values(batch, |mut b, c| {
                        b.push_bind(op.organization_id)
                            .push_bind(op.id)
                            .push_bind(c.patient_id)
                            .push_bind(c.reason.clone());
                    });
                    qb.push(" ON CONFLICT (organization_id, operation_id, patient_id) DO NOTHING");
                    qb.build().execute(&mut *tx).await?;
                }
                if progress_due {
                    Self::emit_event_tx(&mut tx, op.id, $crate::notify::EventType::Progress, now).await?;
                }
                tx.commit().await?;
                Ok(ChunkOutcome::Committed { cancel_requested })
            }

            async fn finish_operation(
                &self,
                finish: $crate::store::ops::Finish,
            ) -> $crate::store::StoreResult<$crate::store::ops::Finished> {
                use $crate::domain::operation::Status;
                use $crate::store::ops::{Ending, Finished};
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                let result = finish.result.as_ref().map(|r| r.to_string());
                const FENCE: &str = " WHERE id = $1 AND attempt = $2 AND status = 'processing'";
                let done = match &finish.ending {
                    Ending::Final(status) => {
                        // A completion gives way to a cancel that committed first (the
                        // attempt then undoes and ends cancelled): what the user was told
                        // when the cancel was accepted stays true. Rollbacks cannot be
                        // cancelled once started.
                        let sql = format!(
                            "UPDATE bulk_operations SET status = $3, result = $4, error_message = $5, completed_at = $6, \
                             output_blob = $7, output_expires_at = $8, lease_owner = NULL, lease_expires_at = NULL, \
                             updated_at = $6{FENCE} AND ($3 <> 'completed' OR cancel_requested = FALSE OR type = 'rollback')"
                        );
                        sqlx::query(&sql)
                            .bind(finish.operation_id)
                            .bind(finish.attempt)
                            .bind(status.as_str())
                            .bind(result)
                            .bind(&finish.error_message)
                            .bind(finish.completed_at)
                            .bind(&finish.output_blob)
                            .bind(finish.output_expires_at)
                            .execute(&mut *tx)
                            .await?
                    }
                    Ending::Retry { at } => {
                        sqlx::query(&format!(
                            "UPDATE bulk_operations SET status = 'scheduled', next_attempt_at = $3, error_message = $4, \
                             failures = failures + 1, attempt_progressed = TRUE, lease_owner = NULL, \
                             lease_expires_at = NULL, updated_at = $5{FENCE}"
                        ))
                        .bind(finish.operation_id)
                        .bind(finish.attempt)
                        .bind(at)
                        .bind(&finish.error_message)
                        .bind(finish.completed_at)
                        .execute(&mut *tx)
                        .await?
                    }
                    Ending::RetryUndo { at, undo } => {
                        // Stays `processing` (undoing); the expired lease lets any worker
                        // resume the undo at `at`.
                        sqlx::query(&format!(
                            "UPDATE bulk_operations SET lease_owner = NULL, lease_expires_at = $3, error_message = $4, \
                             undo_reason = $5, undo_message = COALESCE($6, undo_message), attempt_progressed = TRUE, \
                             updated_at = $7{FENCE}"
                        ))
                        .bind(finish.operation_id)
                        .bind(finish.attempt)
                        .bind(at)
                        .bind(&finish.error_message)
                        .bind(&undo.reason)
                        .bind(&undo.message)
                        .bind(finish.completed_at)
                        .execute(&mut *tx)
                        .await?
                    }
                    Ending::Release => {
                        // An expired lease is claimable at once; a release is no failure.
                        sqlx::query(&format!(
                            "UPDATE bulk_operations SET lease_owner = NULL, lease_expires_at = $3, \
                             attempt_progressed = TRUE, updated_at = $4{FENCE}"
                        ))
                        .bind(finish.operation_id)
                        .bind(finish.attempt)
                        .bind(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH)
                        .bind(finish.completed_at)
                        .execute(&mut *tx)
                        .await?
                    }
                };
                if done.rows_affected() != 1 {
                    let row: Option<(i64, String, bool)> = sqlx::query_as(
                        "SELECT attempt, status, cancel_requested FROM bulk_operations WHERE id = $1",
                    )
                    .bind(finish.operation_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    return Ok(match row {
                        Some((attempt, status, true)) if attempt == finish.attempt && status == "processing" => {
                            Finished::CancelRequested
                        }
                        _ => Finished::LeaseLost,
                    });
                }
                if let Some(audit) = finish.audit {
                    Self::append_audit_tx(&mut tx, audit).await?;
                }
                let mut orphaning = Vec::new();
                if let Ending::Final(status) = finish.ending {
                    if let Some(event) = $crate::notify::EventType::for_final_status(status) {
                        Self::emit_event_tx(&mut tx, finish.operation_id, event, finish.completed_at).await?;
                    }
                    if matches!(status, Status::Failed | Status::Cancelled) {
                        orphaning.push(finish.operation_id);
                    }
                    if let (Status::Completed, Some((target, audit))) = (status, finish.rolled_back) {
                        // The target is of the rollback's organization (the audit
                        // entry's): checked here too, not only when it was scheduled.
                        let marked = sqlx::query(
                            "UPDATE bulk_operations SET status = 'rolled_back', updated_at = $2 \
                             WHERE id = $1 AND organization_id = $3 AND status = 'completed'",
                        )
                        .bind(target)
                        .bind(finish.completed_at)
                        .bind(audit.organization_id)
                        .execute(&mut *tx)
                        .await?;
                        if marked.rows_affected() == 1 {
                            Self::append_audit_tx(&mut tx, audit).await?;
                            Self::emit_event_tx(&mut tx, target, $crate::notify::EventType::RolledBack, finish.completed_at)
                                .await?;
                            orphaning.push(target);
                        }
                    }
                }
                if !orphaning.is_empty() {
                    Self::cancel_dependants_tx(&mut tx, orphaning, finish.completed_at).await?;
                }
                // A finished operation frees a slot and may unblock its dependents.
                Self::notify_engines(&mut tx).await?;
                tx.commit().await?;
                Ok(Finished::Done)
            }

            async fn conflicts(
                &self,
                org: uuid::Uuid,
                operation_id: uuid::Uuid,
                after: Option<uuid::Uuid>,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::ops::Conflict>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT patient_id, reason FROM operation_conflicts WHERE organization_id = ",
                );
                qb.push_bind(org).push(" AND operation_id = ").push_bind(operation_id);
                if let Some(after) = after {
                    qb.push(" AND patient_id > ").push_bind(after);
                }
                qb.push(" ORDER BY patient_id LIMIT ").push_bind(limit);
                let rows: Vec<(uuid::Uuid, String)> = qb.build_query_as().fetch_all(self.reader()).await?;
                Ok(rows
                    .into_iter()
                    .map(|(patient_id, reason)| $crate::store::ops::Conflict { patient_id, reason })
                    .collect())
            }

            async fn count_conflicts(&self, org: uuid::Uuid, operation_id: uuid::Uuid) -> $crate::store::StoreResult<i64> {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM operation_conflicts WHERE organization_id = $1 AND operation_id = $2",
                )
                .bind(org)
                .bind(operation_id)
                .fetch_one(self.reader())
                .await?;
                Ok(n)
            }

            async fn cancel_requested(&self, id: uuid::Uuid) -> $crate::store::StoreResult<bool> {
                let row: Option<(bool,)> = sqlx::query_as("SELECT cancel_requested FROM bulk_operations WHERE id = $1")
                    .bind(id)
                    .fetch_optional(self.reader())
                    .await?;
                Ok(row.map(|(c,)| c).unwrap_or(false))
            }

            async fn row_errors(
                &self,
                operation_id: uuid::Uuid,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::ops::RowError>> {
                let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
                    "SELECT row_number, column_name, code, message FROM operation_row_errors \
                     WHERE operation_id = $1 ORDER BY row_number, column_name LIMIT $2",
                )
                .bind(operation_id)
                .bind(limit)
                .fetch_all(self.reader())
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(row, column, code, message)| $crate::store::ops::RowError { row, column, code, message })
                    .collect())
            }

            async fn output_blob(
                &self,
                org: uuid::Uuid,
                id: uuid::Uuid,
            ) -> $crate::store::StoreResult<Option<(String, chrono::DateTime<chrono::Utc>)>> {
                let row: Option<(Option<String>, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
                    "SELECT output_blob, output_expires_at FROM bulk_operations \
                     WHERE id = $1 AND organization_id = $2 AND status = 'completed'",
                )
                .bind(id)
                .bind(org)
                .fetch_optional(self.reader())
                .await?;
                Ok(match row {
                    Some((Some(blob), Some(expires))) => Some((blob, expires)),
                    _ => None,
                })
            }

            async fn patients_by_unhcr(
                &self,
                org: uuid::Uuid,
                numbers: &[String],
            ) -> $crate::store::StoreResult<Vec<$crate::domain::patient::Patient>> {
                if numbers.is_empty() {
                    return Ok(Vec::new());
                }
                let rows = self.fetch_by_unhcr(org, numbers).await?;
                rows.iter().map(Self::patient_from_row).collect()
            }

            async fn scan_patients(
                &self,
                scan: $crate::store::ops::PatientScan<'_>,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::patient::Patient>> {
                self.scan_patient_page(scan).await
            }

            fn stream_patients(
                &self,
                org: uuid::Uuid,
                filters: $crate::domain::filters::PatientFilters,
                include_deleted: bool,
                columns: &[String],
                batch: usize,
            ) -> tokio::sync::mpsc::Receiver<$crate::store::StoreResult<Vec<$crate::domain::patient::Patient>>> {
                use $crate::domain::patient::{SYSTEM_FIELDS, WRITABLE_FIELDS};
                // Names from the allow-list only (they are put into the SQL text).
                let columns: Vec<&'static str> = SYSTEM_FIELDS
                    .iter()
                    .chain(WRITABLE_FIELDS.iter())
                    .copied()
                    .filter(|c| *c != "id" && columns.iter().any(|w| w == c))
                    .collect();
                self.stream_patient_columns(org, filters, include_deleted, columns, batch.max(1))
            }

            async fn count_patients(&self, scan: $crate::store::ops::PatientScan<'_>) -> $crate::store::StoreResult<i64> {
                let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT COUNT(*)");
                Self::push_scan(&mut qb, &scan);
                let (n,): (i64,) = qb.build_query_as().fetch_one(self.reader()).await?;
                Ok(n)
            }

            async fn patients_by_id(
                &self,
                org: uuid::Uuid,
                ids: &[uuid::Uuid],
            ) -> $crate::store::StoreResult<Vec<$crate::domain::patient::Patient>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                self.fetch_by_ids(org, ids).await
            }

            async fn backups(
                &self,
                operation_id: uuid::Uuid,
                after: Option<uuid::Uuid>,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::ops::Backup>> {
                self.backup_page(operation_id, after, limit).await
            }

            async fn count_backups(&self, operation_id: uuid::Uuid) -> $crate::store::StoreResult<i64> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM operation_backups WHERE operation_id = $1")
                    .bind(operation_id)
                    .fetch_one(self.reader())
                    .await?;
                Ok(n)
            }

            async fn watch_queue(&self, on_change: &(dyn Fn() + Send + Sync)) -> $crate::store::StoreResult<()> {
                self.watch_queue_impl(on_change).await
            }

            async fn purge_backups(&self, before: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<u64> {
                // Measured from the operation's completion, as the rollback window is.
                let done = sqlx::query(
                    "DELETE FROM operation_backups WHERE operation_id IN \
                     (SELECT id FROM bulk_operations WHERE completed_at < $1)",
                )
                    .bind(before)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected())
            }

            async fn expired_exports(
                &self,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<Vec<(uuid::Uuid, String)>> {
                Ok(sqlx::query_as(
                    "SELECT id, output_blob FROM bulk_operations WHERE output_blob IS NOT NULL AND output_expires_at < $1",
                )
                .bind(now)
                .fetch_all(self.reader())
                .await?)
            }

            async fn clear_output(&self, operation_id: uuid::Uuid) -> $crate::store::StoreResult<()> {
                sqlx::query("UPDATE bulk_operations SET output_blob = NULL WHERE id = $1")
                    .bind(operation_id)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn operation_status(
                &self,
                id: uuid::Uuid,
            ) -> $crate::store::StoreResult<Option<$crate::domain::operation::Status>> {
                let row: Option<(String,)> = sqlx::query_as("SELECT status FROM bulk_operations WHERE id = $1")
                    .bind(id)
                    .fetch_optional(self.reader())
                    .await?;
                Ok(row.and_then(|(s,)| $crate::domain::operation::Status::parse(&s)))
            }

            async fn purge_finished_operations(
                &self,
                before: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<u64> {
                const OLD: &str = "SELECT id FROM bulk_operations WHERE completed_at < $1 \
                    AND status IN ('completed', 'failed', 'cancelled', 'rolled_back')";
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                for sql in [
                    format!("DELETE FROM operation_dependencies WHERE operation_id IN ({OLD}) OR depends_on_id IN ({OLD})"),
                    format!("DELETE FROM operation_row_errors WHERE operation_id IN ({OLD})"),
                    format!("DELETE FROM operation_conflicts WHERE operation_id IN ({OLD})"),
                    format!("DELETE FROM operation_backups WHERE operation_id IN ({OLD})"),
                ] {
                    sqlx::query(&sql).bind(before).execute(&mut *tx).await?;
                }
                let done = sqlx::query(&format!("DELETE FROM bulk_operations WHERE id IN ({OLD})"))
                    .bind(before)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            }

            async fn purge_deleted_patients(&self, before: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<u64> {
                let done = sqlx::query("DELETE FROM patients WHERE deleted_at IS NOT NULL AND deleted_at < $1")
                    .bind(before)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected())
            }

            async fn refresh_statistics(&self) -> $crate::store::StoreResult<()> {
                if !Self::DIALECT.analyze_patients.is_empty() {
                    sqlx::query(Self::DIALECT.analyze_patients).execute(self.writer()).await?;
                }
                Ok(())
            }

            async fn audit_operation(&self, entry: $crate::store::NewAuditEntry) -> $crate::store::StoreResult<()> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                Self::append_audit_tx(&mut tx, entry).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}
