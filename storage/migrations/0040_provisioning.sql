-- Provisioning: recorded recommendations, tenant migrations, and the bits a live move needs.

-- The database a deployment provisioned, before it serves the customer. `database_url` is set only
-- at cut-over (the registry routes on it), so a provisioned-but-empty database never serves.
ALTER TABLE deployments ADD COLUMN provisioned_url text;

-- Every evaluation of the decision engine for a customer (on request and on every plan change).
CREATE TABLE recommendations (
    id              bigserial,
    customer_id     uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    trigger         text NOT NULL,                  -- 'request', 'plan_changed', ...
    profile         jsonb NOT NULL,
    mode            text NOT NULL CHECK (mode IN ('multi_tenant', 'single_tenant')),
    infrastructure  text NOT NULL CHECK (infrastructure IN ('local', 'flyio', 'hetzner')),
    plan            text NOT NULL,
    reason          text NOT NULL,
    rules           text[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, id)
);

-- One move of a customer's data between the shared and a dedicated database.
CREATE TABLE tenant_migrations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id     uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    deployment_id   uuid REFERENCES deployments (id) ON DELETE SET NULL,
    from_mode       text NOT NULL CHECK (from_mode IN ('multi_tenant', 'single_tenant')),
    to_mode         text NOT NULL CHECK (to_mode IN ('multi_tenant', 'single_tenant')),
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'switched', 'cleaned', 'failed')),
    plan            text,                           -- whose retention applies (downgrade)
    dropping        jsonb NOT NULL DEFAULT '{}'::jsonb,  -- rows past retention left behind, per table
    tables          jsonb NOT NULL DEFAULT '{}'::jsonb,  -- per table: rows, checksum
    pause_ms        double precision,
    source_url      text,                           -- NULL: the shared database
    cleanup_after   timestamptz,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE UNIQUE INDEX tenant_migrations_one_running ON tenant_migrations (customer_id) WHERE status = 'running';
CREATE INDEX tenant_migrations_customer_idx ON tenant_migrations (customer_id, created_at);

-- The tenant_isolation policy of 0002 as one reusable call for tables added by later migrations.
CREATE FUNCTION webhost_enable_tenant_isolation(p_table regclass) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', p_table);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', p_table);
    EXECUTE format('CREATE POLICY tenant_isolation ON %s '
                   'USING (customer_id = webhost_current_customer() OR webhost_is_operator()) '
                   'WITH CHECK (customer_id = webhost_current_customer() OR webhost_is_operator())', p_table);
END
$$;

SELECT webhost_enable_tenant_isolation('recommendations');
SELECT webhost_enable_tenant_isolation('tenant_migrations');

-- Rows copied with their serial ids (doc_updates.seq, geofence_events.id) must never be overtaken
-- by the target's own sequence: move it forward (never back) past the largest copied value.
CREATE FUNCTION webhost_advance_sequence(p_table text, p_column text, p_value bigint) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    seq text := pg_get_serial_sequence(format('public.%I', p_table), p_column);
    current bigint;
BEGIN
    IF seq IS NULL THEN
        RAISE EXCEPTION 'no serial sequence on %.%', p_table, p_column;
    END IF;
    EXECUTE format('SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM %s', seq) INTO current;
    IF p_value > current THEN
        PERFORM setval(seq, p_value, true);
        RETURN p_value;
    END IF;
    RETURN current;
END
$$;
REVOKE ALL ON FUNCTION webhost_advance_sequence(text, text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhost_advance_sequence(text, text, bigint) TO webhost_app;
