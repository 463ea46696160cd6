-- Security hardening (issue 8). The PostgreSQL migration of the same number does the same.

-- A login attempt is counted before its password is checked; a successful one takes
-- its rows back by this id.
ALTER TABLE login_failures ADD COLUMN attempt_id BLOB;
CREATE INDEX login_failures_attempt ON login_failures (attempt_id) WHERE attempt_id IS NOT NULL;

-- The key (derived from the master key) whose HMAC is the entry's hash; NULL for entries
-- written before the chain was keyed (plain SHA-256).
ALTER TABLE audit_events ADD COLUMN key_id TEXT;

-- The chain head only moves forward, to an entry that exists: it cannot be moved back to
-- hide removed entries, nor deleted. (Anyone with the file can drop these triggers: the
-- head an operator keeps outside the database, `audit verify --expect-head`, covers that.)
CREATE TRIGGER audit_heads_no_delete BEFORE DELETE ON audit_heads
BEGIN SELECT RAISE(ABORT, 'audit_heads only moves forward: DELETE refused'); END;

CREATE TRIGGER audit_heads_insert_checked BEFORE INSERT ON audit_heads
WHEN NOT (NEW.seq = 0 AND NEW.hash = '0000000000000000000000000000000000000000000000000000000000000000')
    AND NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.organization_id = NEW.organization_id
                    AND e.seq = NEW.seq AND e.hash = NEW.hash)
BEGIN SELECT RAISE(ABORT, 'audit_heads must name an existing audit entry'); END;

CREATE TRIGGER audit_heads_update_checked BEFORE UPDATE ON audit_heads
WHEN NEW.organization_id <> OLD.organization_id OR NEW.seq <= OLD.seq
    OR NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.organization_id = NEW.organization_id
                   AND e.seq = NEW.seq AND e.hash = NEW.hash)
BEGIN SELECT RAISE(ABORT, 'audit_heads only moves forward to an existing entry'); END;
