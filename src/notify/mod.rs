//! Notifications (SPEC 6): the events of operations, stored in the outbox table in the
//! transaction of the state change that causes them, then delivered.
//!
//! - `hub`: each process reads new events from the database (LISTEN/NOTIFY on
//!   PostgreSQL, polling as the guarantee) and hands them to its WebSocket clients;
//! - `delivery`: workers claim pending deliveries (email, SMS, webhooks) with a lease,
//!   the way the engine claims operations, and retry them with backoff;
//! - `email`, `sms`, `webhook`: the channels.
//!
//! In-app notifications are written with the event itself. Nothing here holds patient
//! data: an event names an operation, its type, status and counts.

pub mod delivery;
pub mod email;
pub mod hub;
pub mod sms;
pub mod webhook;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// The seven events of SPEC 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "operation.scheduled")]
    Scheduled,
    #[serde(rename = "operation.started")]
    Started,
    #[serde(rename = "operation.progress")]
    Progress,
    #[serde(rename = "operation.completed")]
    Completed,
    #[serde(rename = "operation.failed")]
    Failed,
    #[serde(rename = "operation.cancelled")]
    Cancelled,
    #[serde(rename = "operation.rolled_back")]
    RolledBack,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::Scheduled,
        EventType::Started,
        EventType::Progress,
        EventType::Completed,
        EventType::Failed,
        EventType::Cancelled,
        EventType::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Scheduled => "operation.scheduled",
            EventType::Started => "operation.started",
            EventType::Progress => "operation.progress",
            EventType::Completed => "operation.completed",
            EventType::Failed => "operation.failed",
            EventType::Cancelled => "operation.cancelled",
            EventType::RolledBack => "operation.rolled_back",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == text)
    }

    /// The event of an operation reaching a final status.
    pub fn for_final_status(status: crate::domain::operation::Status) -> Option<Self> {
        use crate::domain::operation::Status;
        match status {
            Status::Completed => Some(EventType::Completed),
            Status::Failed => Some(EventType::Failed),
            Status::Cancelled => Some(EventType::Cancelled),
            Status::RolledBack => Some(EventType::RolledBack),
            Status::Scheduled | Status::Processing => None,
        }
    }

    /// The word used in subjects and messages ("completed", "rolled back").
    pub fn verb(self) -> &'static str {
        match self {
            EventType::Scheduled => "scheduled",
            EventType::Started => "started",
            EventType::Progress => "in progress",
            EventType::Completed => "completed",
            EventType::Failed => "failed",
            EventType::Cancelled => "cancelled",
            EventType::RolledBack => "rolled back",
        }
    }
}

/// Where a user can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    InApp,
    Email,
    Sms,
    Websocket,
}

impl Channel {
    pub const ALL: [Channel; 4] = [
        Channel::InApp,
        Channel::Email,
        Channel::Sms,
        Channel::Websocket,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::InApp => "in_app",
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Websocket => "websocket",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

/// The channels of an event type for a user who set no preference (issue 9): in-app
/// and WebSocket for all (progress is shown live, never stored as a notification),
/// email for the moments the user acts on, SMS when something failed.
pub fn default_channels(event: EventType) -> Vec<Channel> {
    let mut channels = vec![Channel::Websocket];
    if event != EventType::Progress {
        channels.push(Channel::InApp);
    }
    if matches!(
        event,
        EventType::Scheduled
            | EventType::Completed
            | EventType::Failed
            | EventType::Cancelled
            | EventType::RolledBack
    ) {
        channels.push(Channel::Email);
    }
    if event == EventType::Failed {
        channels.push(Channel::Sms);
    }
    channels.sort();
    channels
}

/// Channels as stored in `notification_preferences.channels`.
pub fn channels_to_text(channels: &[Channel]) -> String {
    channels
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn channels_from_text(text: &str) -> Vec<Channel> {
    text.split(',').filter_map(Channel::parse).collect()
}

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Order of writing (for pollers); not shown.
    pub seq: i64,
    /// The `event_id` of SPEC 6.
    pub id: Uuid,
    pub organization_id: Uuid,
    pub operation_id: Uuid,
    pub operation_type: String,
    pub event_type: EventType,
    pub status: String,
    pub processed: i64,
    pub total: Option<i64>,
    /// Who scheduled the operation.
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
}

impl Event {
    /// The event as WebSocket frames, webhooks and the API show it (SPEC 6).
    pub fn to_json(&self) -> Value {
        let percent = match (self.event_type, self.total) {
            (EventType::Completed, _) => 100.0,
            (_, Some(total)) if total > 0 => {
                let share = self.processed as f64 / total as f64;
                ((share * 1000.0).round() / 10.0).min(100.0)
            }
            _ => 0.0,
        };
        json!({
            "event_id": self.id,
            "event_type": self.event_type.as_str(),
            "timestamp": crate::domain::rfc3339(&self.created_at),
            "organization_id": self.organization_id,
            "operation_id": self.operation_id,
            "operation_type": self.operation_type,
            "status": self.status,
            "progress": {"processed": self.processed, "total": self.total, "percent": percent},
        })
    }

    /// A one-line message for in-app notifications and SMS (see [`message`]).
    pub fn message(&self) -> String {
        message(&self.operation_type, self.operation_id, self.event_type)
    }
}

/// The one-line text of an event for in-app notifications and SMS: the operation's
/// type, id and what happened, nothing from its data.
pub fn message(operation_type: &str, operation_id: Uuid, event: EventType) -> String {
    format!(
        "Your {operation_type} operation {operation_id} {}.",
        event.verb()
    )
}

/// Delivery settings, from the command line.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub smtp_url: Option<String>,
    pub smtp_from: String,
    pub public_url: String,
    pub outbox_dir: std::path::PathBuf,
    pub sms_gateway_url: Option<String>,
    pub sms_gateway_token: Option<String>,
    pub webhook_retry_base: std::time::Duration,
    pub webhook_max_attempts: i64,
    pub allow_private_webhooks: bool,
}

impl NotifySettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        NotifySettings {
            smtp_url: config.smtp_url.clone(),
            smtp_from: config.smtp_from.clone(),
            public_url: config.public_url(),
            outbox_dir: config.data_dir.join("outbox"),
            sms_gateway_url: config.sms_gateway_url.clone(),
            sms_gateway_token: config.sms_gateway_token.clone(),
            webhook_retry_base: config.webhook_retry_base,
            webhook_max_attempts: config.webhook_max_attempts,
            allow_private_webhooks: config.allow_private_webhooks,
        }
    }
}
