-- Notifications (issue 9, SPEC 6). The PostgreSQL migration of the same number creates the
-- same tables. Every row belongs to one organization, first in its keys. No table here
-- holds patient data: events carry ids, types, statuses and counts only.

-- The outbox: every event of every operation, written in the transaction of the state
-- change that causes it. `seq` orders them for the WebSocket pollers; `id` is the
-- `event_id` clients see and resume from.
CREATE TABLE operation_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    organization_id BLOB NOT NULL,
    operation_id BLOB NOT NULL,
    operation_type TEXT NOT NULL,
    event_type TEXT NOT NULL,
    status TEXT NOT NULL,
    progress_processed INTEGER NOT NULL,
    progress_total INTEGER,
    user_id BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX operation_events_org ON operation_events (organization_id, seq);
CREATE INDEX operation_events_time ON operation_events (created_at);

-- When the last progress event of an operation was written (at most one a second).
ALTER TABLE bulk_operations ADD COLUMN progress_event_at TEXT;

-- One row per event and channel target (email, sms to a user; a webhook), claimed by
-- delivery workers with a lease like operations, retried with backoff.
CREATE TABLE notification_deliveries (
    id BLOB PRIMARY KEY,
    organization_id BLOB NOT NULL,
    event_seq INTEGER NOT NULL REFERENCES operation_events(seq) ON DELETE CASCADE,
    channel TEXT NOT NULL CHECK (channel IN ('email', 'sms', 'webhook')),
    user_id BLOB,
    webhook_id BLOB,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    lease_owner TEXT,
    lease_expires_at TEXT,
    last_status_code INTEGER,
    last_error TEXT,
    created_at TEXT NOT NULL,
    delivered_at TEXT
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX notification_deliveries_webhook ON notification_deliveries (organization_id, webhook_id, created_at);

-- Every attempt of a delivery, for the delivery log.
CREATE TABLE delivery_attempts (
    organization_id BLOB NOT NULL,
    delivery_id BLOB NOT NULL REFERENCES notification_deliveries(id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    status_code INTEGER,
    error TEXT,
    attempted_at TEXT NOT NULL,
    PRIMARY KEY (organization_id, delivery_id, attempt)
);

-- In-app notifications.
CREATE TABLE notifications (
    id BLOB PRIMARY KEY,
    organization_id BLOB NOT NULL,
    user_id BLOB NOT NULL,
    event_id BLOB,
    event_type TEXT NOT NULL,
    operation_id BLOB,
    operation_type TEXT,
    status TEXT,
    message TEXT NOT NULL,
    created_at TEXT NOT NULL,
    read_at TEXT
);
CREATE INDEX notifications_user ON notifications (organization_id, user_id, id);

-- Per user and event type, the channels wanted; absent rows mean the defaults.
CREATE TABLE notification_preferences (
    organization_id BLOB NOT NULL,
    user_id BLOB NOT NULL,
    event_type TEXT NOT NULL,
    channels TEXT NOT NULL,
    PRIMARY KEY (organization_id, user_id, event_type)
);

ALTER TABLE users ADD COLUMN phone_number TEXT;

CREATE TABLE webhooks (
    id BLOB PRIMARY KEY,
    organization_id BLOB NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    description TEXT NOT NULL,
    -- The signing secret, sealed with the master key.
    secret BLOB NOT NULL,
    enabled INTEGER NOT NULL,
    failing_since TEXT,
    disabled_reason TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX webhooks_org ON webhooks (organization_id);
