-- At most one live rollback per target: two simultaneous rollback requests cannot both
-- be accepted. The PostgreSQL migration of the same number creates the same index.
CREATE UNIQUE INDEX bulk_operations_one_rollback ON bulk_operations (target_operation_id)
    WHERE type = 'rollback' AND status IN ('scheduled', 'processing');
