-- The web UI's operation page reads the audit trail of one operation.
CREATE INDEX IF NOT EXISTS audit_events_operation ON audit_events (organization_id, operation_id);
