-- Haven foundation: organizations, users, tokens, patients, bulk operations, audit.
-- The PostgreSQL migration of the same number creates the same tables.

CREATE TABLE organizations (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE users (
    id BLOB PRIMARY KEY,
    organization_id BLOB NOT NULL REFERENCES organizations(id),
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'data_manager', 'analyst', 'viewer')),
    created_at TEXT NOT NULL
);
CREATE INDEX users_org ON users (organization_id);

CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,
    user_id BLOB NOT NULL REFERENCES users(id),
    organization_id BLOB NOT NULL REFERENCES organizations(id),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX tokens_user ON tokens (user_id);

CREATE TABLE login_failures (
    throttle_key TEXT NOT NULL,
    failed_at TEXT NOT NULL
);
CREATE INDEX login_failures_key ON login_failures (throttle_key, failed_at);

CREATE TABLE patients (
    id BLOB PRIMARY KEY,
    organization_id BLOB NOT NULL REFERENCES organizations(id),
    given_name TEXT NOT NULL,
    family_name TEXT NOT NULL,
    gender TEXT NOT NULL,
    unhcr_number TEXT,
    middle_names TEXT,
    date_of_birth TEXT,
    estimated_birth_year INTEGER,
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
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    deleted_at TEXT,
    import_operation_id BLOB
);
-- The number leads, so that a lookup of a chunk's numbers is an index condition in
-- every plan (org first let PostgreSQL's generic plan scan the whole organization).
CREATE UNIQUE INDEX patients_unhcr_unique ON patients (unhcr_number, organization_id)
    WHERE deleted_at IS NULL AND unhcr_number IS NOT NULL;
CREATE INDEX patients_org_id ON patients (organization_id, id);
CREATE INDEX patients_import ON patients (import_operation_id) WHERE import_operation_id IS NOT NULL;

CREATE TABLE bulk_operations (
    id BLOB PRIMARY KEY,
    type TEXT NOT NULL CHECK (type IN ('import', 'export', 'update', 'delete', 'rollback')),
    status TEXT NOT NULL CHECK (status IN ('scheduled', 'processing', 'completed', 'failed', 'cancelled', 'rolled_back')),
    user_id BLOB NOT NULL REFERENCES users(id),
    organization_id BLOB NOT NULL REFERENCES organizations(id),
    scheduled_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    created_at TEXT NOT NULL,
    -- Sealed (AES-256-GCM) JSON of everything needed to run the operation.
    parameters BLOB NOT NULL,
    parameters_key_id TEXT NOT NULL,
    result TEXT,
    error_message TEXT,
    timezone TEXT NOT NULL DEFAULT 'UTC',
    email_notification INTEGER NOT NULL DEFAULT 1,
    dry_run INTEGER NOT NULL DEFAULT 0,
    schedule_id BLOB,
    target_operation_id BLOB,
    idempotency_key TEXT,
    -- Engine state: attempt fences state changes, the lease marks the running worker.
    attempt INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at TEXT,
    next_attempt_at TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress_processed INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER,
    progress_cursor TEXT,
    updated_at TEXT NOT NULL
);
CREATE INDEX bulk_operations_due ON bulk_operations (status, scheduled_at);
CREATE INDEX bulk_operations_org ON bulk_operations (organization_id, id);
CREATE UNIQUE INDEX bulk_operations_idempotency ON bulk_operations (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE operation_dependencies (
    operation_id BLOB NOT NULL REFERENCES bulk_operations(id),
    depends_on_id BLOB NOT NULL REFERENCES bulk_operations(id),
    PRIMARY KEY (operation_id, depends_on_id)
);

CREATE TABLE audit_events (
    id BLOB PRIMARY KEY,
    organization_id BLOB NOT NULL REFERENCES organizations(id),
    seq INTEGER NOT NULL,
    occurred_at TEXT NOT NULL,
    user_id BLOB,
    action TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT,
    operation_id BLOB,
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
    organization_id BLOB PRIMARY KEY REFERENCES organizations(id),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);

-- SQLite has no roles to keep a writer out; triggers refuse UPDATE and DELETE as on
-- PostgreSQL, and the hash chain catches whoever drops them.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused'); END;
