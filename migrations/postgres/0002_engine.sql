-- The bulk engine: per-row error reports, before-images for rollback, export outputs.
-- The SQLite migration of the same number creates the same tables.

ALTER TABLE bulk_operations ADD COLUMN output_blob TEXT;
ALTER TABLE bulk_operations ADD COLUMN output_expires_at TIMESTAMPTZ;

-- Row errors hold row numbers, column names, rule codes and fixed messages: no cell values.
CREATE TABLE operation_row_errors (
    operation_id UUID NOT NULL REFERENCES bulk_operations(id) ON DELETE CASCADE,
    row_number BIGINT NOT NULL,
    column_name TEXT NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX operation_row_errors_op ON operation_row_errors (operation_id, row_number);

-- The state of a patient before an operation changed it, sealed with the master key.
-- `version_after` is the version the operation left, so a later edit is detectable.
CREATE TABLE operation_backups (
    operation_id UUID NOT NULL REFERENCES bulk_operations(id) ON DELETE CASCADE,
    patient_id UUID NOT NULL,
    version_after BIGINT NOT NULL,
    before_image BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (operation_id, patient_id)
);
