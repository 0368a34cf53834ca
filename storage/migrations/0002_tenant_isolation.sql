-- Tenant isolation enforced by PostgreSQL.
-- The application connects as (SET ROLE to) webhost_app: it owns no table and cannot bypass RLS.
-- Every tenant table has FORCE ROW LEVEL SECURITY and a policy on
-- customer_id = current_setting('app.customer_id'), made transaction-local by storage.database.
-- Operator-wide access is the explicit `app.operator` setting, made only by Database.operator()
-- (which writes an audit line) and by the SECURITY DEFINER lookups below.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'webhost_app') THEN
        BEGIN
            CREATE ROLE webhost_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database of the same cluster created it at the same instant
        END;
    END IF;
    IF NOT pg_has_role(current_user, 'webhost_app', 'MEMBER') THEN
        EXECUTE format('GRANT webhost_app TO %I', current_user);
    END IF;
END
$$;

CREATE FUNCTION webhost_current_customer() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('app.customer_id', true), '')::uuid $$;

CREATE FUNCTION webhost_is_operator() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce(current_setting('app.operator', true), '') = 'on' $$;

-- Policies: one per tenant table, all the same rule.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'customer_users', 'api_keys', 'subscriptions', 'vehicles', 'drivers', 'vehicle_positions_latest',
        'geofences', 'geofence_events', 'routes', 'deployments', 'infrastructure_events',
        'doc_updates', 'doc_snapshots', 'gps_positions', 'usage_metrics'
    ] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (customer_id = webhost_current_customer() OR webhost_is_operator()) '
            'WITH CHECK (customer_id = webhost_current_customer() OR webhost_is_operator())', t);
    END LOOP;
END
$$;

ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE customers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON customers
    USING (id = webhost_current_customer() OR webhost_is_operator())
    WITH CHECK (id = webhost_current_customer() OR webhost_is_operator());

-- Privileges of the application role (tables created by later migrations get the same).
GRANT USAGE ON SCHEMA public TO webhost_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO webhost_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO webhost_app;
REVOKE INSERT, UPDATE, DELETE ON schema_migrations, storage_features FROM webhost_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO webhost_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO webhost_app;

-- Lookups that must find a row before the tenant is known (authentication). They run as the
-- owner with app.operator set for the function's duration only, and return the minimum.
CREATE FUNCTION webhost_find_api_key(p_hash bytea)
    RETURNS TABLE (id uuid, customer_id uuid, customer_slug text, customer_status text, environment text,
                   permissions text[], expires_at timestamptz, revoked_at timestamptz, last_used_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    SET app.operator = 'on'
    AS $$
        SELECT k.id, k.customer_id, c.slug, c.status, k.environment, k.permissions, k.expires_at, k.revoked_at,
               k.last_used_at
        FROM api_keys k JOIN customers c ON c.id = k.customer_id
        WHERE k.key_hash = p_hash
    $$;

CREATE FUNCTION webhost_find_customer(p_slug text)
    RETURNS TABLE (id uuid, slug text, status text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    SET app.operator = 'on'
    AS $$ SELECT c.id, c.slug, c.status FROM customers c WHERE c.slug = p_slug $$;

-- Native partitions: created and dropped by the owner on behalf of the application role. Each
-- new partition gets the same RLS policy as its parent so it cannot be read around the parent.
CREATE FUNCTION webhost_ensure_day_partitions(p_table text, p_from date, p_to date) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    d date;
    part text;
    created integer := 0;
BEGIN
    IF p_table NOT IN ('gps_positions', 'usage_metrics') THEN
        RAISE EXCEPTION 'not a day-partitioned table: %', p_table;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table pt JOIN pg_class c ON c.oid = pt.partrelid
                   WHERE c.relname = p_table AND c.relnamespace = 'public'::regnamespace) THEN
        RETURN 0;  -- TimescaleDB hypertable: chunks are its business
    END IF;
    d := p_from;
    WHILE d <= p_to LOOP
        part := format('%s_p%s', p_table, to_char(d, 'YYYYMMDD'));
        IF to_regclass(format('public.%I', part)) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                    part, p_table, (d::timestamp AT TIME ZONE 'UTC'), ((d + 1)::timestamp AT TIME ZONE 'UTC'));
                EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', part);
                EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', part);
                EXECUTE format(
                    'CREATE POLICY tenant_isolation ON %I USING (customer_id = webhost_current_customer() OR webhost_is_operator()) '
                    'WITH CHECK (customer_id = webhost_current_customer() OR webhost_is_operator())', part);
                EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO webhost_app', part);
                created := created + 1;
            EXCEPTION WHEN duplicate_table THEN
                NULL;  -- a concurrent caller made it
            END;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN created;
END
$$;

CREATE FUNCTION webhost_drop_day_partitions_before(p_table text, p_before date) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    r record;
    dropped integer := 0;
BEGIN
    IF p_table NOT IN ('gps_positions', 'usage_metrics') THEN
        RAISE EXCEPTION 'not a day-partitioned table: %', p_table;
    END IF;
    FOR r IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = p_table AND p.relnamespace = 'public'::regnamespace
          AND c.relname ~ ('^' || p_table || '_p[0-9]{8}$')
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < p_before
    LOOP
        EXECUTE format('DROP TABLE %I', r.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;

REVOKE ALL ON FUNCTION webhost_ensure_day_partitions(text, date, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION webhost_drop_day_partitions_before(text, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhost_ensure_day_partitions(text, date, date) TO webhost_app;
GRANT EXECUTE ON FUNCTION webhost_drop_day_partitions_before(text, date) TO webhost_app;

-- Partitions for the recent past and the coming week, so a fresh database accepts points at once.
SELECT webhost_ensure_day_partitions('gps_positions', current_date - 3, current_date + 7);
SELECT webhost_ensure_day_partitions('usage_metrics', current_date - 3, current_date + 7);
