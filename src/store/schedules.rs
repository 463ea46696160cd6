//! The storage side of recurring schedules and internal periodic jobs. Which process
//! handles an occurrence is settled by the database: a compare-and-set on the
//! schedule's `next_run_at`, and a unique key on (schedule, occurrence).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{NewAuditEntry, Page, StoreResult};
use crate::domain::operation::Operation;
use crate::domain::schedule::Schedule;

#[async_trait]
pub trait ScheduleStore: Send + Sync {
    async fn create_schedule(&self, schedule: &Schedule, audit: NewAuditEntry) -> StoreResult<()>;
    async fn get_schedule(&self, org: Uuid, id: Uuid) -> StoreResult<Option<Schedule>>;
    async fn list_schedules(&self, org: Uuid, page: &Page) -> StoreResult<Vec<Schedule>>;
    /// Replaces the editable fields; false when there is no such schedule.
    async fn update_schedule(&self, schedule: &Schedule, audit: NewAuditEntry)
        -> StoreResult<bool>;
    async fn delete_schedule(&self, org: Uuid, id: Uuid, audit: NewAuditEntry)
        -> StoreResult<bool>;
    /// Enabled schedules whose `next_run_at` has come (any organization).
    async fn due_schedules(&self, now: DateTime<Utc>, limit: i64) -> StoreResult<Vec<Schedule>>;
    /// The earliest `next_run_at` of an enabled schedule.
    async fn next_schedule_at(&self) -> StoreResult<Option<DateTime<Utc>>>;
    /// Moves `next_run_at` from `expected` to `next` without an operation (skipped
    /// occurrences); false when another process moved it first.
    async fn advance_schedule(
        &self,
        id: Uuid,
        expected: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
    ) -> StoreResult<bool>;
    /// Moves `next_run_at` from `expected` to `next` and inserts the occurrence's
    /// operation (with its audit entry and event), in one transaction; false when
    /// another process handled the occurrence first.
    async fn fire_schedule(
        &self,
        op: &Operation,
        occurrence: DateTime<Utc>,
        expected: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        audit: NewAuditEntry,
    ) -> StoreResult<bool>;
    /// The schedule's operations, newest first.
    async fn schedule_operations(
        &self,
        org: Uuid,
        schedule: Uuid,
        limit: i64,
    ) -> StoreResult<Vec<Operation>>;
    /// The role of a user of the organization (the owner of a schedule), if they exist.
    async fn user_role(
        &self,
        org: Uuid,
        user: Uuid,
    ) -> StoreResult<Option<crate::domain::permission::Role>>;
    /// Claims one run of an internal job when it is due: moves its next run to
    /// `next`. True for exactly one process per period.
    async fn claim_internal_job(
        &self,
        name: &str,
        worker: &str,
        now: DateTime<Utc>,
        next: DateTime<Utc>,
    ) -> StoreResult<bool>;
}
