-- Notifications (issue 9, SPEC 6). The SQLite migration of the same number creates the
-- same tables. Every row belongs to one organization, first in its keys. No table here
-- holds patient data: events carry ids, types, statuses and counts only.

-- The outbox: every event of every operation, written in the transaction of the state
-- change that causes it. `seq` orders them for the WebSocket pollers; `id` is the
-- `event_id` clients see and resume from.
CREATE TABLE operation_events (
    seq BIGSERIAL PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    organization_id UUID NOT NULL,
    operation_id UUID NOT NULL,
    operation_type TEXT NOT NULL,
    event_type TEXT NOT NULL,
    status TEXT NOT NULL,
    progress_processed BIGINT NOT NULL,
    progress_total BIGINT,
    user_id UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX operation_events_org ON operation_events (organization_id, seq);
CREATE INDEX operation_events_time ON operation_events (created_at);

-- When the last progress event of an operation was written (at most one a second).
ALTER TABLE bulk_operations ADD COLUMN progress_event_at TIMESTAMPTZ;

-- One row per event and channel target (email, sms to a user; a webhook), claimed by
-- delivery workers with a lease like operations, retried with backoff.
CREATE TABLE notification_deliveries (
    id UUID PRIMARY KEY,
    organization_id UUID NOT NULL,
    event_seq BIGINT NOT NULL REFERENCES operation_events(seq) ON DELETE CASCADE,
    channel TEXT NOT NULL CHECK (channel IN ('email', 'sms', 'webhook')),
    user_id UUID,
    webhook_id UUID,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    lease_owner TEXT,
    lease_expires_at TIMESTAMPTZ,
    last_status_code BIGINT,
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    delivered_at TIMESTAMPTZ
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX notification_deliveries_webhook ON notification_deliveries (organization_id, webhook_id, created_at);

-- Every attempt of a delivery, for the delivery log.
CREATE TABLE delivery_attempts (
    organization_id UUID NOT NULL,
    delivery_id UUID NOT NULL REFERENCES notification_deliveries(id) ON DELETE CASCADE,
    attempt BIGINT NOT NULL,
    status_code BIGINT,
    error TEXT,
    attempted_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (organization_id, delivery_id, attempt)
);

-- In-app notifications.
CREATE TABLE notifications (
    id UUID PRIMARY KEY,
    organization_id UUID NOT NULL,
    user_id UUID NOT NULL,
    event_id UUID,
    event_type TEXT NOT NULL,
    operation_id UUID,
    operation_type TEXT,
    status TEXT,
    message TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    read_at TIMESTAMPTZ
);
CREATE INDEX notifications_user ON notifications (organization_id, user_id, id);

-- Per user and event type, the channels wanted; absent rows mean the defaults.
CREATE TABLE notification_preferences (
    organization_id UUID NOT NULL,
    user_id UUID NOT NULL,
    event_type TEXT NOT NULL,
    channels TEXT NOT NULL,
    PRIMARY KEY (organization_id, user_id, event_type)
);

ALTER TABLE users ADD COLUMN phone_number TEXT;

CREATE TABLE webhooks (
    id UUID PRIMARY KEY,
    organization_id UUID NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    description TEXT NOT NULL,
    -- The signing secret, sealed with the master key.
    secret BYTEA NOT NULL,
    enabled BOOLEAN NOT NULL,
    failing_since TIMESTAMPTZ,
    disabled_reason TEXT,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX webhooks_org ON webhooks (organization_id);

-- Row-level security, as for the tables of 0005_security.sql.
DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['operation_conflicts', 'operation_events', 'notification_deliveries', 'delivery_attempts', 'notifications', 'notification_preferences', 'webhooks'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY haven_organization ON %I '
                       'USING (haven_organization_visible(organization_id)) '
                       'WITH CHECK (haven_organization_visible(organization_id))', t);
    END LOOP;
END
$$;
