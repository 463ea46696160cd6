-- Engine hardening (issue 7). The PostgreSQL migration of the same number makes the same
-- changes.

-- The failure budget: attempts that failed (a transient error, or a crash before the
-- attempt committed anything). A graceful release or a takeover after progress does
-- not count, so rolling restarts never exhaust `--max-attempts`.
ALTER TABLE bulk_operations ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
-- Set by every committed chunk, cleared by every claim: did the current attempt move?
ALTER TABLE bulk_operations ADD COLUMN attempt_progressed INTEGER NOT NULL DEFAULT 0;
-- Set while an operation undoes its own partial changes (cancelled, aborted, failed):
-- `cancelled|aborted|failed`, with the message it will end with. An undo is retried
-- until it completes; it never ends the operation half-undone.
ALTER TABLE bulk_operations ADD COLUMN undo_reason TEXT;
ALTER TABLE bulk_operations ADD COLUMN undo_message TEXT;

-- Patients an undo left alone because someone changed them meanwhile, one row each
-- (a list in the cursor grew quadratically). Organization first, like every key here.
CREATE TABLE operation_conflicts (
    organization_id BLOB NOT NULL,
    operation_id BLOB NOT NULL REFERENCES bulk_operations(id) ON DELETE CASCADE,
    patient_id BLOB NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (organization_id, operation_id, patient_id)
);

-- Per-organization running counts for the claim, without scanning finished operations.
CREATE INDEX bulk_operations_running ON bulk_operations (organization_id)
    WHERE status = 'processing';
-- Due work only: scheduled (by time) and running (by lease expiry).
CREATE INDEX bulk_operations_scheduled ON bulk_operations (scheduled_at, id)
    WHERE status = 'scheduled';
CREATE INDEX bulk_operations_leases ON bulk_operations (lease_expires_at)
    WHERE status = 'processing';
