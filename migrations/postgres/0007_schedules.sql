-- Recurring schedules (issue 10, SPEC 5) and internal periodic jobs. The SQLite
-- migration of the same number creates the same tables.

CREATE TABLE bulk_schedules (
    id UUID PRIMARY KEY,
    organization_id UUID NOT NULL,
    user_id UUID NOT NULL,
    name TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    operation_type TEXT NOT NULL CHECK (operation_type IN ('export', 'update', 'delete')),
    -- The operation's options (filters may name patients), sealed with the master key.
    operation BYTEA NOT NULL,
    enabled BOOLEAN NOT NULL,
    missed TEXT NOT NULL CHECK (missed IN ('skip', 'run_once')),
    -- The next occurrence not yet handled; advanced by whichever process handles it.
    next_run_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX bulk_schedules_org ON bulk_schedules (organization_id, id);
CREATE INDEX bulk_schedules_due ON bulk_schedules (next_run_at) WHERE enabled;

-- One operation per occurrence of a schedule, guaranteed by the database.
ALTER TABLE bulk_operations ADD COLUMN occurrence_at TIMESTAMPTZ;
CREATE UNIQUE INDEX bulk_operations_occurrence ON bulk_operations (schedule_id, occurrence_at)
    WHERE schedule_id IS NOT NULL;

-- Periodic internal work (the cleanup): one run per period, whichever process claims it.
CREATE TABLE internal_jobs (
    name TEXT PRIMARY KEY,
    next_run_at TIMESTAMPTZ NOT NULL,
    last_run_by TEXT
);

-- Row-level security, as for the tables of 0005_security.sql.
DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['bulk_schedules'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY haven_organization ON %I '
                       'USING (haven_organization_visible(organization_id)) '
                       'WITH CHECK (haven_organization_visible(organization_id))', t);
    END LOOP;
END
$$;
