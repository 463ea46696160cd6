-- Security hardening (issue 8). The SQLite migration of the same number does the same.

-- A login attempt is counted before its password is checked; a successful one takes
-- its rows back by this id.
ALTER TABLE login_failures ADD COLUMN attempt_id UUID;
CREATE INDEX login_failures_attempt ON login_failures (attempt_id) WHERE attempt_id IS NOT NULL;

-- The key (derived from the master key) whose HMAC is the entry's hash; NULL for entries
-- written before the chain was keyed (plain SHA-256).
ALTER TABLE audit_events ADD COLUMN key_id TEXT;

-- The chain head only moves forward, to an entry that exists: it cannot be moved back to
-- hide removed entries, nor deleted or truncated.
CREATE FUNCTION audit_heads_forward_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
        RAISE EXCEPTION 'audit_heads only moves forward: % refused', TG_OP;
    END IF;
    IF TG_OP = 'INSERT' AND NEW.seq = 0 AND NEW.hash = '0000000000000000000000000000000000000000000000000000000000000000' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.organization_id <> OLD.organization_id OR NEW.seq <= OLD.seq) THEN
        RAISE EXCEPTION 'audit_heads only moves forward';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.organization_id = NEW.organization_id
                   AND e.seq = NEW.seq AND e.hash = NEW.hash) THEN
        RAISE EXCEPTION 'audit_heads must name an existing audit entry';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_heads_checked
    BEFORE INSERT OR UPDATE OR DELETE ON audit_heads
    FOR EACH ROW EXECUTE FUNCTION audit_heads_forward_only();
CREATE TRIGGER audit_heads_no_truncate
    BEFORE TRUNCATE ON audit_heads
    FOR EACH STATEMENT EXECUTE FUNCTION audit_heads_forward_only();
