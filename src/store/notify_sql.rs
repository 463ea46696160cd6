//! The notification SQL, shared by both backends like `sql.rs` (see there for why a
//! macro). `emit_event_tx` is called by the engine's transactions in `ops_sql.rs`.

/// Columns of `operation_events` read into a [`crate::notify::Event`].
pub const EVENT_COLUMNS: &str = "seq, id, organization_id, operation_id, operation_type, \
    event_type, status, progress_processed, progress_total, user_id, created_at";

/// Columns of `notification_deliveries` (as `d`) joined with its event (as `e`).
pub const DELIVERY_COLUMNS: &str = "d.id, d.organization_id, d.channel, d.user_id, \
    d.webhook_id, e.id AS event_id, e.event_type, e.operation_id, d.status, d.attempts, \
    d.next_attempt_at, d.last_status_code, d.last_error, d.created_at, d.delivered_at";

pub const WEBHOOK_COLUMNS: &str = "id, organization_id, url, events, description, secret, \
    enabled, failing_since, disabled_reason, created_at";

macro_rules! notify_store_impl {
    ($store:ty, $db:ty, $row:ty) => {
        impl $store {
            fn event_from_row(row: &$row) -> $crate::store::StoreResult<$crate::notify::Event> {
                use sqlx::Row;
                let event_type: String = row.try_get("event_type")?;
                Ok($crate::notify::Event {
                    seq: row.try_get("seq")?,
                    id: row.try_get("id")?,
                    organization_id: row.try_get("organization_id")?,
                    operation_id: row.try_get("operation_id")?,
                    operation_type: row.try_get("operation_type")?,
                    event_type: $crate::notify::EventType::parse(&event_type)
                        .ok_or_else(|| $crate::store::StoreError::Corrupt(format!("event type {event_type}")))?,
                    status: row.try_get("status")?,
                    processed: row.try_get("progress_processed")?,
                    total: row.try_get("progress_total")?,
                    user_id: row.try_get("user_id")?,
                    created_at: row.try_get("created_at")?,
                })
            }

            fn delivery_from_row(row: &$row) -> $crate::store::StoreResult<$crate::store::notify::Delivery> {
                use sqlx::Row;
                Ok($crate::store::notify::Delivery {
                    id: row.try_get("id")?,
                    organization_id: row.try_get("organization_id")?,
                    channel: row.try_get("channel")?,
                    user_id: row.try_get("user_id")?,
                    webhook_id: row.try_get("webhook_id")?,
                    event_id: row.try_get("event_id")?,
                    event_type: row.try_get("event_type")?,
                    operation_id: row.try_get("operation_id")?,
                    status: row.try_get("status")?,
                    attempts: row.try_get("attempts")?,
                    next_attempt_at: row.try_get("next_attempt_at")?,
                    last_status_code: row.try_get("last_status_code")?,
                    last_error: row.try_get("last_error")?,
                    created_at: row.try_get("created_at")?,
                    delivered_at: row.try_get("delivered_at")?,
                    attempt_log: Vec::new(),
                })
            }

            fn webhook_from_row(row: &$row) -> $crate::store::StoreResult<$crate::store::notify::Webhook> {
                use sqlx::Row;
                let events: String = row.try_get("events")?;
                Ok($crate::store::notify::Webhook {
                    id: row.try_get("id")?,
                    organization_id: row.try_get("organization_id")?,
                    url: row.try_get("url")?,
                    events: events.split(',').filter_map($crate::notify::EventType::parse).collect(),
                    description: row.try_get("description")?,
                    enabled: row.try_get("enabled")?,
                    failing_since: row.try_get("failing_since")?,
                    disabled_reason: row.try_get("disabled_reason")?,
                    created_at: row.try_get("created_at")?,
                    sealed_secret: row.try_get("secret")?,
                })
            }

            /// Writes an event of operation `operation_id` as it is now in this
            /// transaction, and fans it out: the in-app notification and the email and
            /// SMS deliveries of the user who scheduled it (by their preferences; email
            /// only when the operation asked for it), a delivery per subscribed
            /// webhook of the organization. Committed with the state change, or not at all.
            async fn emit_event_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                operation_id: uuid::Uuid,
                event_type: $crate::notify::EventType,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<()> {
                use $crate::notify::{Channel, EventType};
                type OpRow = (uuid::Uuid, uuid::Uuid, String, String, bool, i64, Option<i64>);
                let op: Option<OpRow> = sqlx::query_as(
                    "SELECT organization_id, user_id, type, status, email_notification, progress_processed, \
                     progress_total FROM bulk_operations WHERE id = $1",
                )
                .bind(operation_id)
                .fetch_optional(&mut **tx)
                .await?;
                let Some((org, user, op_type, status, wants_email, processed, total)) = op else {
                    return Ok(());
                };
                let event_id = $crate::domain::new_id();
                let (seq,): (i64,) = sqlx::query_as(
                    "INSERT INTO operation_events (id, organization_id, operation_id, operation_type, event_type, \
                     status, progress_processed, progress_total, user_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING seq",
                )
                .bind(event_id)
                .bind(org)
                .bind(operation_id)
                .bind(&op_type)
                .bind(event_type.as_str())
                .bind(&status)
                .bind(processed)
                .bind(total)
                .bind(user)
                .bind(now)
                .fetch_one(&mut **tx)
                .await?;
                let chosen: Option<(String,)> = sqlx::query_as(
                    "SELECT channels FROM notification_preferences \
                     WHERE organization_id = $1 AND user_id = $2 AND event_type = $3",
                )
                .bind(org)
                .bind(user)
                .bind(event_type.as_str())
                .fetch_optional(&mut **tx)
                .await?;
                let channels = match chosen {
                    Some((text,)) => $crate::notify::channels_from_text(&text),
                    None => $crate::notify::default_channels(event_type),
                };
                if channels.contains(&Channel::InApp) && event_type != EventType::Progress {
                    let message = $crate::notify::message(&op_type, operation_id, event_type);
                    sqlx::query(
                        "INSERT INTO notifications (id, organization_id, user_id, event_id, event_type, operation_id, \
                         operation_type, status, message, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    )
                    .bind($crate::domain::new_id())
                    .bind(org)
                    .bind(user)
                    .bind(event_id)
                    .bind(event_type.as_str())
                    .bind(operation_id)
                    .bind(&op_type)
                    .bind(&status)
                    .bind(message)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                }
                let mut targets: Vec<(&str, Option<uuid::Uuid>, Option<uuid::Uuid>)> = Vec::new();
                if channels.contains(&Channel::Email) && wants_email {
                    targets.push(("email", Some(user), None));
                }
                if channels.contains(&Channel::Sms) {
                    let phone: Option<(Option<String>,)> =
                        sqlx::query_as("SELECT phone_number FROM users WHERE id = $1")
                            .bind(user)
                            .fetch_optional(&mut **tx)
                            .await?;
                    if matches!(phone, Some((Some(_),))) {
                        targets.push(("sms", Some(user), None));
                    }
                }
                let hooks: Vec<(uuid::Uuid, String)> = sqlx::query_as(
                    "SELECT id, events FROM webhooks WHERE organization_id = $1 AND enabled = TRUE",
                )
                .bind(org)
                .fetch_all(&mut **tx)
                .await?;
                for (hook, events) in &hooks {
                    if events.split(',').any(|e| e == event_type.as_str()) {
                        targets.push(("webhook", None, Some(*hook)));
                    }
                }
                for (channel, user_id, webhook_id) in targets {
                    sqlx::query(
                        "INSERT INTO notification_deliveries (id, organization_id, event_seq, channel, user_id, \
                         webhook_id, status, attempts, next_attempt_at, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7)",
                    )
                    .bind($crate::domain::new_id())
                    .bind(org)
                    .bind(seq)
                    .bind(channel)
                    .bind(user_id)
                    .bind(webhook_id)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                }
                if !Self::DIALECT.notify_events.is_empty() {
                    sqlx::query(Self::DIALECT.notify_events).execute(&mut **tx).await?;
                }
                Ok(())
            }

            async fn fetch_events(
                &self,
                sql: &str,
                binds: (Option<uuid::Uuid>, i64, Option<chrono::DateTime<chrono::Utc>>, i64),
            ) -> $crate::store::StoreResult<Vec<$crate::notify::Event>> {
                let (org, after, since, limit) = binds;
                let mut query = sqlx::query(sql).bind(after).bind(limit);
                if let Some(org) = org {
                    query = query.bind(org);
                }
                if let Some(since) = since {
                    query = query.bind(since);
                }
                let rows = query.fetch_all(self.reader()).await?;
                rows.iter().map(Self::event_from_row).collect()
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::notify::NotifyStore for $store {
            async fn events_after(
                &self,
                after_seq: i64,
                recent_since: chrono::DateTime<chrono::Utc>,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::notify::Event>> {
                // A late commit of an earlier `seq` is caught within the last seconds,
                // up to 256 positions back.
                let sql = format!(
                    "SELECT {} FROM operation_events WHERE seq > $1 - 256 AND (seq > $1 OR created_at >= $3) \
                     ORDER BY seq LIMIT $2",
                    $crate::store::notify_sql::EVENT_COLUMNS
                );
                self.fetch_events(&sql, (None, after_seq, Some(recent_since), limit)).await
            }

            async fn latest_event_seq(&self) -> $crate::store::StoreResult<i64> {
                let (seq,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM operation_events")
                    .fetch_one(self.reader())
                    .await?;
                Ok(seq.unwrap_or(0))
            }

            async fn event_seq(&self, org: uuid::Uuid, event_id: uuid::Uuid) -> $crate::store::StoreResult<Option<i64>> {
                let row: Option<(i64,)> = sqlx::query_as(
                    "SELECT seq FROM operation_events WHERE organization_id = $1 AND id = $2",
                )
                .bind(org)
                .bind(event_id)
                .fetch_optional(self.reader())
                .await?;
                Ok(row.map(|(s,)| s))
            }

            async fn org_events_after(
                &self,
                org: uuid::Uuid,
                after_seq: i64,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::notify::Event>> {
                let sql = format!(
                    "SELECT {} FROM operation_events WHERE seq > $1 AND organization_id = $3 ORDER BY seq LIMIT $2",
                    $crate::store::notify_sql::EVENT_COLUMNS
                );
                self.fetch_events(&sql, (Some(org), after_seq, None, limit)).await
            }

            async fn claim_deliveries(
                &self,
                worker: &str,
                lease: std::time::Duration,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::notify::DeliveryJob>> {
                use $crate::store::notify::{DeliveryJob, Recipient};
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                let now = Self::db_now(&mut tx).await?;
                let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
                let sql = format!(
                    "UPDATE notification_deliveries SET lease_owner = $1, lease_expires_at = $2, attempts = attempts + 1 \
                     WHERE id IN (SELECT id FROM notification_deliveries WHERE status = 'pending' \
                     AND next_attempt_at <= $3 AND (lease_expires_at IS NULL OR lease_expires_at < $3) \
                     ORDER BY next_attempt_at LIMIT $4{}) RETURNING id",
                    Self::DIALECT.skip_locked
                );
                let ids: Vec<(uuid::Uuid,)> = sqlx::query_as(&sql)
                    .bind(worker)
                    .bind(until)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                let mut jobs = Vec::new();
                for (id,) in ids {
                    let sql = format!(
                        "SELECT {}, e.seq, e.organization_id AS e_org, e.operation_type, e.status AS e_status, \
                         e.progress_processed, e.progress_total, e.user_id AS e_user, e.created_at AS e_created \
                         FROM notification_deliveries d JOIN operation_events e ON e.seq = d.event_seq WHERE d.id = $1",
                        $crate::store::notify_sql::DELIVERY_COLUMNS
                    );
                    let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(self.reader()).await? else {
                        continue;
                    };
                    let delivery = Self::delivery_from_row(&row)?;
                    let event = {
                        use sqlx::Row;
                        $crate::notify::Event {
                            seq: row.try_get("seq")?,
                            id: delivery.event_id,
                            organization_id: row.try_get("e_org")?,
                            operation_id: delivery.operation_id,
                            operation_type: row.try_get("operation_type")?,
                            event_type: $crate::notify::EventType::parse(&delivery.event_type).ok_or_else(|| {
                                $crate::store::StoreError::Corrupt(format!("event type {}", delivery.event_type))
                            })?,
                            status: row.try_get("e_status")?,
                            processed: row.try_get("progress_processed")?,
                            total: row.try_get("progress_total")?,
                            user_id: row.try_get("e_user")?,
                            created_at: row.try_get("e_created")?,
                        }
                    };
                    let recipient = match (delivery.user_id, delivery.webhook_id) {
                        (Some(user), _) => {
                            let found: Option<(String, Option<String>)> = sqlx::query_as(
                                "SELECT email, phone_number FROM users WHERE id = $1 AND organization_id = $2",
                            )
                            .bind(user)
                            .bind(delivery.organization_id)
                            .fetch_optional(self.reader())
                            .await?;
                            match found {
                                Some((email, phone_number)) => Recipient::User { email, phone_number },
                                None => Recipient::Gone,
                            }
                        }
                        (None, Some(hook)) => match self.fetch_webhook(delivery.organization_id, hook).await? {
                            Some(hook) => Recipient::Webhook(hook),
                            None => Recipient::Gone,
                        },
                        (None, None) => Recipient::Gone,
                    };
                    let error: Option<(Option<String>,)> = sqlx::query_as(
                        "SELECT error_message FROM bulk_operations WHERE id = $1 AND organization_id = $2",
                    )
                    .bind(delivery.operation_id)
                    .bind(delivery.organization_id)
                    .fetch_optional(self.reader())
                    .await?;
                    jobs.push(DeliveryJob {
                        delivery,
                        event,
                        recipient,
                        operation_error: error.and_then(|(e,)| e),
                    });
                }
                Ok(jobs)
            }

            async fn finish_delivery(
                &self,
                id: uuid::Uuid,
                worker: &str,
                result: $crate::store::notify::DeliveryResult,
            ) -> $crate::store::StoreResult<bool> {
                use $crate::store::notify::DeliveryResult;
                let now = $crate::domain::now();
                let (status, next, code, error, delivered) = match result {
                    DeliveryResult::Delivered { status_code } => ("delivered", now, status_code, None, Some(now)),
                    DeliveryResult::Retry { at, status_code, error } => ("pending", at, status_code, Some(error), None),
                    DeliveryResult::Failed { status_code, error } => ("failed", now, status_code, Some(error), None),
                };
                let (code_for_log, error_for_log) = (code, error.clone());
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                let done: Option<(uuid::Uuid, i64)> = sqlx::query_as(
                    "UPDATE notification_deliveries SET status = $3, next_attempt_at = $4, last_status_code = $5, \
                     last_error = $6, delivered_at = $7, lease_owner = NULL, lease_expires_at = NULL \
                     WHERE id = $1 AND lease_owner = $2 AND status = 'pending' RETURNING organization_id, attempts",
                )
                .bind(id)
                .bind(worker)
                .bind(status)
                .bind(next)
                .bind(code)
                .bind(error)
                .bind(delivered)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((org, attempt)) = done else {
                    return Ok(false);
                };
                sqlx::query(
                    "INSERT INTO delivery_attempts (organization_id, delivery_id, attempt, status_code, error, attempted_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (organization_id, delivery_id, attempt) DO NOTHING",
                )
                .bind(org)
                .bind(id)
                .bind(attempt)
                .bind(code_for_log)
                .bind(error_for_log)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn next_delivery_at(&self) -> $crate::store::StoreResult<Option<chrono::DateTime<chrono::Utc>>> {
                let (at,): (Option<chrono::DateTime<chrono::Utc>>,) = sqlx::query_as(
                    "SELECT MIN(next_attempt_at) FROM notification_deliveries WHERE status = 'pending'",
                )
                .fetch_one(self.reader())
                .await?;
                Ok(at)
            }

            async fn list_deliveries(
                &self,
                org: uuid::Uuid,
                webhook: Option<uuid::Uuid>,
                status: Option<&str>,
                page: &$crate::store::Page,
            ) -> $crate::store::StoreResult<Vec<$crate::store::notify::Delivery>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM notification_deliveries d JOIN operation_events e ON e.seq = d.event_seq \
                     WHERE d.organization_id = ",
                    $crate::store::notify_sql::DELIVERY_COLUMNS
                ));
                qb.push_bind(org);
                if let Some(hook) = webhook {
                    qb.push(" AND d.webhook_id = ").push_bind(hook);
                }
                if let Some(status) = status {
                    qb.push(" AND d.status = ").push_bind(status.to_string());
                }
                if let Some(after) = page.after {
                    qb.push(" AND d.id < ").push_bind(after);
                }
                qb.push(" ORDER BY d.id DESC LIMIT ").push_bind(page.limit);
                let rows = qb.build().fetch_all(self.reader()).await?;
                let mut deliveries: Vec<$crate::store::notify::Delivery> =
                    rows.iter().map(Self::delivery_from_row).collect::<Result<_, _>>()?;
                for delivery in &mut deliveries {
                    let attempts: Vec<(i64, Option<i64>, Option<String>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
                        "SELECT attempt, status_code, error, attempted_at FROM delivery_attempts \
                         WHERE organization_id = $1 AND delivery_id = $2 ORDER BY attempt",
                    )
                    .bind(org)
                    .bind(delivery.id)
                    .fetch_all(self.reader())
                    .await?;
                    delivery.attempt_log = attempts
                        .into_iter()
                        .map(|(attempt, status_code, error, attempted_at)| $crate::store::notify::DeliveryAttempt {
                            attempt,
                            status_code,
                            error,
                            attempted_at,
                        })
                        .collect();
                }
                Ok(deliveries)
            }

            async fn create_webhook(
                &self,
                hook: &$crate::store::notify::Webhook,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                sqlx::query(
                    "INSERT INTO webhooks (id, organization_id, url, events, description, secret, enabled, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(hook.id)
                .bind(hook.organization_id)
                .bind(&hook.url)
                .bind(hook.events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(","))
                .bind(&hook.description)
                .bind(&hook.sealed_secret)
                .bind(hook.enabled)
                .bind(hook.created_at)
                .execute(&mut *tx)
                .await?;
                Self::append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn list_webhooks(&self, org: uuid::Uuid) -> $crate::store::StoreResult<Vec<$crate::store::notify::Webhook>> {
                let sql = format!(
                    "SELECT {} FROM webhooks WHERE organization_id = $1 ORDER BY id",
                    $crate::store::notify_sql::WEBHOOK_COLUMNS
                );
                let rows = sqlx::query(&sql).bind(org).fetch_all(self.reader()).await?;
                rows.iter().map(Self::webhook_from_row).collect()
            }

            async fn get_webhook(
                &self,
                org: uuid::Uuid,
                id: uuid::Uuid,
            ) -> $crate::store::StoreResult<Option<$crate::store::notify::Webhook>> {
                self.fetch_webhook(org, id).await
            }

            async fn update_webhook(
                &self,
                hook: &$crate::store::notify::Webhook,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                let done = sqlx::query(
                    "UPDATE webhooks SET url = $3, events = $4, description = $5, enabled = $6, \
                     failing_since = CASE WHEN $6 THEN NULL ELSE failing_since END, \
                     disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END \
                     WHERE id = $1 AND organization_id = $2",
                )
                .bind(hook.id)
                .bind(hook.organization_id)
                .bind(&hook.url)
                .bind(hook.events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(","))
                .bind(&hook.description)
                .bind(hook.enabled)
                .execute(&mut *tx)
                .await?;
                Self::commit_audited_if_found(tx, done.rows_affected(), audit).await
            }

            async fn delete_webhook(
                &self,
                org: uuid::Uuid,
                id: uuid::Uuid,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                // Its pending deliveries go with it; the log of past ones stays.
                sqlx::query(
                    "UPDATE notification_deliveries SET status = 'failed', last_error = 'the webhook was deleted' \
                     WHERE organization_id = $1 AND webhook_id = $2 AND status = 'pending'",
                )
                .bind(org)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                let done = sqlx::query("DELETE FROM webhooks WHERE id = $1 AND organization_id = $2")
                    .bind(id)
                    .bind(org)
                    .execute(&mut *tx)
                    .await?;
                Self::commit_audited_if_found(tx, done.rows_affected(), audit).await
            }

            async fn webhook_health(
                &self,
                org: uuid::Uuid,
                id: uuid::Uuid,
                ok: bool,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<Option<chrono::DateTime<chrono::Utc>>> {
                let sql = if ok {
                    "UPDATE webhooks SET failing_since = NULL WHERE id = $1 AND organization_id = $2"
                } else {
                    "UPDATE webhooks SET failing_since = COALESCE(failing_since, $3) WHERE id = $1 AND organization_id = $2"
                };
                sqlx::query(sql).bind(id).bind(org).bind(now).execute(self.writer()).await?;
                Ok(self.fetch_webhook(org, id).await?.and_then(|h| h.failing_since))
            }

            async fn disable_webhook(
                &self,
                org: uuid::Uuid,
                id: uuid::Uuid,
                reason: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                let done = sqlx::query(
                    "UPDATE webhooks SET enabled = FALSE, disabled_reason = $3 \
                     WHERE id = $1 AND organization_id = $2 AND enabled = TRUE",
                )
                .bind(id)
                .bind(org)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 1 {
                    let admins: Vec<(uuid::Uuid,)> = sqlx::query_as(
                        "SELECT id FROM users WHERE organization_id = $1 AND role = 'admin'",
                    )
                    .bind(org)
                    .fetch_all(&mut *tx)
                    .await?;
                    for (admin,) in admins {
                        sqlx::query(
                            "INSERT INTO notifications (id, organization_id, user_id, event_type, message, created_at) \
                             VALUES ($1, $2, $3, 'webhook.disabled', $4, $5)",
                        )
                        .bind($crate::domain::new_id())
                        .bind(org)
                        .bind(admin)
                        .bind(format!("Webhook {id} was disabled: {reason}. Fix the endpoint, then enable it again."))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Self::append_audit_tx(&mut tx, $crate::store::NewAuditEntry {
                        organization_id: org,
                        user_id: None,
                        action: "webhook.disable".into(),
                        resource_type: "webhook".into(),
                        resource_id: Some(id.to_string()),
                        operation_id: None,
                        client_addr: None,
                        outcome: "success".into(),
                        details: serde_json::json!({"reason": reason}).to_string(),
                    })
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn list_notifications(
                &self,
                org: uuid::Uuid,
                user: uuid::Uuid,
                page: &$crate::store::Page,
            ) -> $crate::store::StoreResult<Vec<$crate::store::notify::Notification>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT id, event_id, event_type, operation_id, operation_type, status, message, created_at, read_at \
                     FROM notifications WHERE organization_id = ",
                );
                qb.push_bind(org).push(" AND user_id = ").push_bind(user);
                if let Some(after) = page.after {
                    qb.push(" AND id < ").push_bind(after);
                }
                qb.push(" ORDER BY id DESC LIMIT ").push_bind(page.limit);
                type Row = (
                    uuid::Uuid,
                    Option<uuid::Uuid>,
                    String,
                    Option<uuid::Uuid>,
                    Option<String>,
                    Option<String>,
                    String,
                    chrono::DateTime<chrono::Utc>,
                    Option<chrono::DateTime<chrono::Utc>>,
                );
                let rows: Vec<Row> = qb.build_query_as().fetch_all(self.reader()).await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, event_id, event_type, operation_id, operation_type, status, message, created_at, read_at)| {
                        $crate::store::notify::Notification {
                            id,
                            event_id,
                            event_type,
                            operation_id,
                            operation_type,
                            status,
                            message,
                            created_at,
                            read_at,
                        }
                    })
                    .collect())
            }

            async fn unread_count(&self, org: uuid::Uuid, user: uuid::Uuid) -> $crate::store::StoreResult<i64> {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM notifications WHERE organization_id = $1 AND user_id = $2 AND read_at IS NULL",
                )
                .bind(org)
                .bind(user)
                .fetch_one(self.reader())
                .await?;
                Ok(n)
            }

            async fn mark_read(
                &self,
                org: uuid::Uuid,
                user: uuid::Uuid,
                id: uuid::Uuid,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE notifications SET read_at = COALESCE(read_at, $4) \
                     WHERE id = $1 AND organization_id = $2 AND user_id = $3",
                )
                .bind(id)
                .bind(org)
                .bind(user)
                .bind(now)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn mark_all_read(
                &self,
                org: uuid::Uuid,
                user: uuid::Uuid,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<u64> {
                let done = sqlx::query(
                    "UPDATE notifications SET read_at = $3 WHERE organization_id = $1 AND user_id = $2 AND read_at IS NULL",
                )
                .bind(org)
                .bind(user)
                .bind(now)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected())
            }

            async fn preferences(
                &self,
                org: uuid::Uuid,
                user: uuid::Uuid,
            ) -> $crate::store::StoreResult<$crate::store::notify::Preferences> {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT event_type, channels FROM notification_preferences WHERE organization_id = $1 AND user_id = $2",
                )
                .bind(org)
                .bind(user)
                .fetch_all(self.reader())
                .await?;
                let channels = $crate::notify::EventType::ALL
                    .into_iter()
                    .map(|event| {
                        let set = rows
                            .iter()
                            .find(|(e, _)| e == event.as_str())
                            .map(|(_, c)| $crate::notify::channels_from_text(c))
                            .unwrap_or_else(|| $crate::notify::default_channels(event));
                        (event, set)
                    })
                    .collect();
                let phone: Option<(Option<String>,)> =
                    sqlx::query_as("SELECT phone_number FROM users WHERE id = $1 AND organization_id = $2")
                        .bind(user)
                        .bind(org)
                        .fetch_optional(self.reader())
                        .await?;
                Ok($crate::store::notify::Preferences {
                    channels,
                    phone_number: phone.and_then(|(p,)| p),
                })
            }

            async fn set_preferences(
                &self,
                org: uuid::Uuid,
                user: uuid::Uuid,
                channels: &[($crate::notify::EventType, Vec<$crate::notify::Channel>)],
                phone_number: Option<Option<String>>,
                audit: $crate::store::NewAuditEntry,
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                for (event, set) in channels {
                    sqlx::query(
                        "INSERT INTO notification_preferences (organization_id, user_id, event_type, channels) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (organization_id, user_id, event_type) \
                         DO UPDATE SET channels = excluded.channels",
                    )
                    .bind(org)
                    .bind(user)
                    .bind(event.as_str())
                    .bind($crate::notify::channels_to_text(set))
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some(phone) = phone_number {
                    sqlx::query("UPDATE users SET phone_number = $3 WHERE id = $1 AND organization_id = $2")
                        .bind(user)
                        .bind(org)
                        .bind(phone)
                        .execute(&mut *tx)
                        .await?;
                }
                Self::append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn watch_events(&self, on_event: &(dyn Fn() + Send + Sync)) -> $crate::store::StoreResult<()> {
                self.watch_channel_impl("haven_events", on_event).await
            }

            async fn purge_events(&self, before: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<u64> {
                let mut tx = self.writer().begin_with(Self::DIALECT.begin_write).await?;
                // Pending deliveries keep their event until they are done.
                sqlx::query(
                    "DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT d.id FROM notification_deliveries d \
                     JOIN operation_events e ON e.seq = d.event_seq WHERE d.status <> 'pending' AND e.created_at < $1)",
                )
                .bind(before)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "DELETE FROM notification_deliveries WHERE status <> 'pending' AND event_seq IN \
                     (SELECT seq FROM operation_events WHERE created_at < $1)",
                )
                .bind(before)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM notifications WHERE created_at < $1")
                    .bind(before)
                    .execute(&mut *tx)
                    .await?;
                let done = sqlx::query(
                    "DELETE FROM operation_events WHERE created_at < $1 AND NOT EXISTS \
                     (SELECT 1 FROM notification_deliveries d WHERE d.event_seq = operation_events.seq)",
                )
                .bind(before)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            }
        }

        impl $store {
            async fn fetch_webhook(
                &self,
                org: uuid::Uuid,
                id: uuid::Uuid,
            ) -> $crate::store::StoreResult<Option<$crate::store::notify::Webhook>> {
                let sql = format!(
                    "SELECT {} FROM webhooks WHERE id = $1 AND organization_id = $2",
                    $crate::store::notify_sql::WEBHOOK_COLUMNS
                );
                let row = sqlx::query(&sql).bind(id).bind(org).fetch_optional(self.reader()).await?;
                row.as_ref().map(Self::webhook_from_row).transpose()
            }
        }
    };
}
