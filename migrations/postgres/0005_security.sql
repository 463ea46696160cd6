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

-- Row-level security: every table with an organization_id shows and accepts only the
-- rows of the organization named by the setting `haven.organization_id`, which Haven
-- sets per transaction (`SET LOCAL` through set_config) on the paths that serve a
-- request. `*` means every organization: Haven's own connections start with it for the
-- engine and the lookups that cross organizations by design (login by email, token,
-- scheduler, cleanup); see docs/DECISIONS.md. Unset or empty: no row at all, so any
-- other client of the database (a report, a psql session) sees nothing until it says
-- which organization it works for. FORCE makes the tables' owner subject too;
-- superusers and roles with BYPASSRLS are not (run Haven as neither).
CREATE FUNCTION haven_organization_visible(org UUID) RETURNS BOOLEAN AS $$
    SELECT CASE
        WHEN current_setting('haven.organization_id', true) = '*' THEN true
        WHEN coalesce(current_setting('haven.organization_id', true), '') = '' THEN false
        ELSE org = current_setting('haven.organization_id', true)::uuid
    END
$$ LANGUAGE sql STABLE;

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'tokens', 'patients', 'bulk_operations',
                             'audit_events', 'audit_heads'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY haven_organization ON %I '
                       'USING (haven_organization_visible(organization_id)) '
                       'WITH CHECK (haven_organization_visible(organization_id))', t);
    END LOOP;
END
$$;
