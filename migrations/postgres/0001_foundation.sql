-- Haven foundation: organizations, users, tokens, patients, bulk operations, audit.
-- The SQLite migration of the same number creates the same tables.

CREATE TABLE organizations (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE users (
    id UUID PRIMARY KEY,
    organization_id UUID NOT NULL REFERENCES organizations(id),
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'data_manager', 'analyst', 'viewer')),
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX users_org ON users (organization_id);

CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users(id),
    organization_id UUID NOT NULL REFERENCES organizations(id),
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX tokens_user ON tokens (user_id);

CREATE TABLE login_failures (
    throttle_key TEXT NOT NULL,
    failed_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX login_failures_key ON login_failures (throttle_key, failed_at);

CREATE TABLE patients (
    id UUID PRIMARY KEY,
    organization_id UUID NOT NULL REFERENCES organizations(id),
    given_name TEXT NOT NULL,
    family_name TEXT NOT NULL,
    gender TEXT NOT NULL,
    unhcr_number TEXT,
    middle_names TEXT,
    date_of_birth DATE,
    estimated_birth_year BIGINT,
    place_of_birth TEXT,
    refugee_status TEXT,
    origin_country TEXT,
    current_camp TEXT,
    camp_section TEXT,
    phone_number TEXT,
    email TEXT,
    primary_language TEXT,
    languages_spoken TEXT NOT NULL DEFAULT '[]',
    blood_type TEXT,
    allergies TEXT NOT NULL DEFAULT '[]',
    chronic_conditions TEXT NOT NULL DEFAULT '[]',
    emergency_contact_name TEXT,
    emergency_contact_phone TEXT,
    verification_status TEXT NOT NULL DEFAULT 'unverified',
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    version BIGINT NOT NULL DEFAULT 1,
    deleted_at TIMESTAMPTZ,
    import_operation_id UUID
);
-- The number leads, so that a lookup of a chunk's numbers is an index condition in
-- every plan (org first let PostgreSQL's generic plan scan the whole organization).
CREATE UNIQUE INDEX patients_unhcr_unique ON patients (unhcr_number, organization_id)
    WHERE deleted_at IS NULL AND unhcr_number IS NOT NULL;
CREATE INDEX patients_org_id ON patients (organization_id, id);
CREATE INDEX patients_import ON patients (import_operation_id) WHERE import_operation_id IS NOT NULL;

CREATE TABLE bulk_operations (
    id UUID PRIMARY KEY,
    type TEXT NOT NULL CHECK (type IN ('import', 'export', 'update', 'delete', 'rollback')),
    status TEXT NOT NULL CHECK (status IN ('scheduled', 'processing', 'completed', 'failed', 'cancelled', 'rolled_back')),
    user_id UUID NOT NULL REFERENCES users(id),
    organization_id UUID NOT NULL REFERENCES organizations(id),
    scheduled_at TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    -- Sealed (AES-256-GCM) JSON of everything needed to run the operation.
    parameters BYTEA NOT NULL,
    parameters_key_id TEXT NOT NULL,
    result TEXT,
    error_message TEXT,
    timezone TEXT NOT NULL DEFAULT 'UTC',
    email_notification BOOLEAN NOT NULL DEFAULT TRUE,
    dry_run BOOLEAN NOT NULL DEFAULT FALSE,
    schedule_id UUID,
    target_operation_id UUID,
    idempotency_key TEXT,
    -- Engine state: attempt fences state changes, the lease marks the running worker.
    attempt BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at TIMESTAMPTZ,
    next_attempt_at TIMESTAMPTZ,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    progress_processed BIGINT NOT NULL DEFAULT 0,
    progress_total BIGINT,
    progress_cursor TEXT,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX bulk_operations_due ON bulk_operations (status, scheduled_at);
CREATE INDEX bulk_operations_org ON bulk_operations (organization_id, id);
CREATE UNIQUE INDEX bulk_operations_idempotency ON bulk_operations (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE operation_dependencies (
    operation_id UUID NOT NULL REFERENCES bulk_operations(id),
    depends_on_id UUID NOT NULL REFERENCES bulk_operations(id),
    PRIMARY KEY (operation_id, depends_on_id)
);

CREATE TABLE audit_events (
    id UUID PRIMARY KEY,
    organization_id UUID NOT NULL REFERENCES organizations(id),
    seq BIGINT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    user_id UUID,
    action TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT,
    operation_id UUID,
    client_addr TEXT,
    outcome TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (organization_id, seq)
);

-- The last link of each organization's chain: locked while appending, and compared by
-- `audit verify` so that removing the newest entries is detected too.
CREATE TABLE audit_heads (
    organization_id UUID PRIMARY KEY REFERENCES organizations(id),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);

CREATE FUNCTION audit_events_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
