//! The storage side of notifications: the event outbox, deliveries claimed with a lease,
//! in-app notifications, preferences and webhooks. Events are written by the engine's
//! own transactions (see `notify_sql.rs`, `emit_event_tx`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{NewAuditEntry, Page, StoreResult};
use crate::notify::{Channel, Event, EventType};

/// One delivery of one event on one channel, as the delivery log shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub channel: String,
    pub user_id: Option<Uuid>,
    pub webhook_id: Option<Uuid>,
    pub event_id: Uuid,
    pub event_type: String,
    pub operation_id: Uuid,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// Every attempt so far (filled by `list_deliveries`).
    pub attempt_log: Vec<DeliveryAttempt>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryAttempt {
    pub attempt: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub attempted_at: DateTime<Utc>,
}

impl Delivery {
    pub fn to_json(&self) -> serde_json::Value {
        let ts = |t: &Option<DateTime<Utc>>| t.as_ref().map(crate::domain::rfc3339);
        serde_json::json!({
            "id": self.id,
            "channel": self.channel,
            "webhook_id": self.webhook_id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "operation_id": self.operation_id,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": if self.status == "pending" { ts(&self.next_attempt_at) } else { None },
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "created_at": crate::domain::rfc3339(&self.created_at),
            "delivered_at": ts(&self.delivered_at),
            "attempt_log": self.attempt_log.iter().map(|a| serde_json::json!({
                "attempt": a.attempt,
                "status_code": a.status_code,
                "error": a.error,
                "attempted_at": crate::domain::rfc3339(&a.attempted_at),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Who a claimed delivery goes to.
#[derive(Debug, Clone)]
pub enum Recipient {
    User {
        email: String,
        phone_number: Option<String>,
    },
    Webhook(Webhook),
    /// Deleted since the event (a removed user or webhook): nothing to deliver.
    Gone,
}

/// A claimed delivery with what it needs.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub delivery: Delivery,
    pub event: Event,
    pub recipient: Recipient,
    /// The operation's error message, from which a failure mail names the category.
    pub operation_error: Option<String>,
}

/// How one attempt of a delivery went.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryResult {
    Delivered {
        status_code: Option<i64>,
    },
    Retry {
        at: DateTime<Utc>,
        status_code: Option<i64>,
        error: String,
    },
    Failed {
        status_code: Option<i64>,
        error: String,
    },
}

/// A webhook endpoint of an organization (the secret is kept sealed, apart).
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub url: String,
    pub events: Vec<EventType>,
    pub description: String,
    pub enabled: bool,
    pub failing_since: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The signing secret sealed with the master key.
    pub sealed_secret: Vec<u8>,
}

impl Webhook {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "url": self.url,
            "events": self.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            "description": self.description,
            "enabled": self.enabled,
            "failing_since": self.failing_since.as_ref().map(crate::domain::rfc3339),
            "disabled_reason": self.disabled_reason,
            "created_at": crate::domain::rfc3339(&self.created_at),
        })
    }
}

/// An in-app notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: Uuid,
    pub event_id: Option<Uuid>,
    pub event_type: String,
    pub operation_id: Option<Uuid>,
    pub operation_type: Option<String>,
    pub status: Option<String>,
    pub message: String,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
}

impl Notification {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "operation_id": self.operation_id,
            "operation_type": self.operation_type,
            "status": self.status,
            "message": self.message,
            "created_at": crate::domain::rfc3339(&self.created_at),
            "read": self.read_at.is_some(),
            "read_at": self.read_at.as_ref().map(crate::domain::rfc3339),
        })
    }
}

/// A user's notification settings: channels per event type (defaults where unset).
#[derive(Debug, Clone, PartialEq)]
pub struct Preferences {
    pub channels: Vec<(EventType, Vec<Channel>)>,
    pub phone_number: Option<String>,
}

#[async_trait]
pub trait NotifyStore: Send + Sync {
    /// Events written after `after_seq`, plus those of the last seconds with a lower
    /// `seq` (a transaction that took its `seq` earlier may commit later), oldest first.
    async fn events_after(
        &self,
        after_seq: i64,
        recent_since: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<Vec<Event>>;
    async fn latest_event_seq(&self) -> StoreResult<i64>;
    /// The position of one of the organization's events (a reconnecting client's).
    async fn event_seq(&self, org: Uuid, event_id: Uuid) -> StoreResult<Option<i64>>;
    /// The organization's events after `after_seq`, oldest first.
    async fn org_events_after(
        &self,
        org: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<Event>>;

    /// Claims due deliveries for `worker` (lease from the database's clock).
    async fn claim_deliveries(
        &self,
        worker: &str,
        lease: std::time::Duration,
        limit: i64,
    ) -> StoreResult<Vec<DeliveryJob>>;
    /// Records an attempt; false when the lease was lost (another worker has it).
    async fn finish_delivery(
        &self,
        id: Uuid,
        worker: &str,
        result: DeliveryResult,
    ) -> StoreResult<bool>;
    async fn next_delivery_at(&self) -> StoreResult<Option<DateTime<Utc>>>;
    /// The organization's deliveries, newest first, of one webhook and/or one status.
    async fn list_deliveries(
        &self,
        org: Uuid,
        webhook: Option<Uuid>,
        status: Option<&str>,
        page: &Page,
    ) -> StoreResult<Vec<Delivery>>;

    async fn create_webhook(&self, hook: &Webhook, audit: NewAuditEntry) -> StoreResult<()>;
    async fn list_webhooks(&self, org: Uuid) -> StoreResult<Vec<Webhook>>;
    async fn get_webhook(&self, org: Uuid, id: Uuid) -> StoreResult<Option<Webhook>>;
    /// Replaces URL, events, description and `enabled` (re-enabling clears the failure
    /// state); false when there is no such webhook.
    async fn update_webhook(&self, hook: &Webhook, audit: NewAuditEntry) -> StoreResult<bool>;
    async fn delete_webhook(&self, org: Uuid, id: Uuid, audit: NewAuditEntry) -> StoreResult<bool>;
    /// Records the outcome of a delivery for the webhook's health: a success clears
    /// `failing_since`, a failure sets it when unset. Returns `failing_since` after.
    async fn webhook_health(
        &self,
        org: Uuid,
        id: Uuid,
        ok: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<DateTime<Utc>>>;
    /// Disables a webhook that kept failing, tells the organization's admins in-app,
    /// and audits it, in one transaction.
    async fn disable_webhook(
        &self,
        org: Uuid,
        id: Uuid,
        reason: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    async fn list_notifications(
        &self,
        org: Uuid,
        user: Uuid,
        page: &Page,
    ) -> StoreResult<Vec<Notification>>;
    async fn unread_count(&self, org: Uuid, user: Uuid) -> StoreResult<i64>;
    async fn mark_read(
        &self,
        org: Uuid,
        user: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    async fn mark_all_read(&self, org: Uuid, user: Uuid, now: DateTime<Utc>) -> StoreResult<u64>;

    async fn preferences(&self, org: Uuid, user: Uuid) -> StoreResult<Preferences>;
    /// Stores the given event types' channels (others keep theirs) and, when given,
    /// the phone number, with the audit entry, in one transaction.
    async fn set_preferences(
        &self,
        org: Uuid,
        user: Uuid,
        channels: &[(EventType, Vec<Channel>)],
        phone_number: Option<Option<String>>,
        audit: NewAuditEntry,
    ) -> StoreResult<()>;
    /// Calls `on_event` whenever another process writes events, until the connection
    /// fails (PostgreSQL LISTEN); returns at once where there is no such channel.
    async fn watch_events(&self, on_event: &(dyn Fn() + Send + Sync)) -> StoreResult<()>;
    /// Removes events (with their deliveries) written before `before`.
    async fn purge_events(&self, before: DateTime<Utc>) -> StoreResult<u64>;
}
