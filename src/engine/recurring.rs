//! Recurring schedules at run time: every process looks for due schedules and
//! creates the operation of each occurrence. No leader: the database decides who
//! handles an occurrence (see `ScheduleStore::fire_schedule`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{parameters_aad, Engine};
use crate::domain::now;
use crate::domain::operation::{NewOperation, Operation};
use crate::domain::schedule::{self, Schedule, ScheduledOperation};
use crate::store::NewAuditEntry;

/// The longest sleep between looks: schedules created or changed by another process
/// are seen within it.
const POLL: Duration = Duration::from_secs(1);

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SchedulePass {
    pub fired: u32,
    pub skipped: u32,
}

impl Engine {
    /// Handles due schedules until `shutdown`.
    pub async fn run_schedules(
        self: std::sync::Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if let Err(e) = self.fire_due_schedules(now()).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "handling recurring schedules failed"
                );
            }
            let wait = match self.store.next_schedule_at().await {
                Ok(Some(at)) => (at - now()).to_std().unwrap_or(Duration::ZERO).min(POLL),
                _ => POLL,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Handles every schedule due at `now` (the clock is a parameter so tests can move
    /// it): creates the operation of the occurrence to run, skips the others.
    pub async fn fire_due_schedules(&self, now: DateTime<Utc>) -> anyhow::Result<SchedulePass> {
        let mut pass = SchedulePass::default();
        for due in self.store.due_schedules(now, 100).await? {
            match self.handle_schedule(&due, now).await {
                Ok((fired, skipped)) => {
                    pass.fired += u32::from(fired);
                    pass.skipped += skipped;
                }
                Err(e) => {
                    tracing::warn!(schedule_id = %due.id, error = format!("{e:#}"), "a recurring schedule could not be handled")
                }
            }
        }
        Ok(pass)
    }

    async fn handle_schedule(
        &self,
        s: &Schedule,
        now: DateTime<Utc>,
    ) -> anyhow::Result<(bool, u32)> {
        let Some(due) = s.next_run_at else {
            return Ok((false, 0));
        };
        let cron = schedule::parse_cron(&s.cron).map_err(anyhow::Error::msg)?;
        let zone = schedule::parse_zone(&s.timezone).map_err(anyhow::Error::msg)?;
        let plan = schedule::plan(&cron, zone, due, now, s.missed);
        let Some(occurrence) = plan.fire else {
            self.store.advance_schedule(s.id, due, plan.next).await?;
            return Ok((false, plan.skipped));
        };
        let sealed = self
            .keyring
            .open(&s.sealed_operation, &schedule::operation_aad(s.id))
            .map_err(|_| anyhow::anyhow!("the schedule's operation cannot be decrypted"))?;
        let what: ScheduledOperation = serde_json::from_slice(&sealed)?;
        // The occurrence runs as the user who made the schedule, with their
        // permission as it is now.
        let allowed = match self.store.user_role(s.organization_id, s.user_id).await? {
            Some(role) => role.has(crate::domain::permission::Permission::to_schedule(
                s.operation_type,
            )),
            None => false,
        };
        if !allowed {
            tracing::warn!(schedule_id = %s.id, "the schedule's owner may no longer run it; occurrence skipped");
            self.store.advance_schedule(s.id, due, plan.next).await?;
            return Ok((false, plan.skipped + 1));
        }
        let id = crate::domain::new_id();
        let op = Operation::scheduled(
            NewOperation {
                id,
                op_type: s.operation_type,
                user_id: s.user_id,
                organization_id: s.organization_id,
                scheduled_at: occurrence,
                parameters: self
                    .keyring
                    .seal(&serde_json::to_vec(&what.parameters)?, &parameters_aad(id)),
                parameters_key_id: self.keyring.active_key_id(),
                timezone: s.timezone.clone(),
                email_notification: what.email_notification,
                dry_run: what.dry_run,
                schedule_id: Some(s.id),
                target_operation_id: None,
                idempotency_key: None,
                depends_on: Vec::new(),
            },
            now,
        );
        let audit = NewAuditEntry {
            organization_id: s.organization_id,
            user_id: Some(s.user_id),
            action: "operation.schedule".into(),
            resource_type: "bulk_operation".into(),
            resource_id: Some(id.to_string()),
            operation_id: Some(id),
            client_addr: None,
            outcome: "success".into(),
            details: json!({"type": s.operation_type.as_str(), "schedule_id": s.id,
                "occurrence": crate::domain::rfc3339(&occurrence), "skipped": plan.skipped})
            .to_string(),
        };
        let fired = self
            .store
            .fire_schedule(&op, occurrence, due, plan.next, audit)
            .await?;
        if fired {
            self.wake();
        } else {
            // Another process handled it, or the occurrence has its operation already
            // (a schedule moved back by hand): either way, move on past it.
            self.store.advance_schedule(s.id, due, plan.next).await?;
        }
        Ok((fired, plan.skipped))
    }
}
