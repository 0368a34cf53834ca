-- The tenant_isolation policy, evaluated once per query instead of once per row.
-- `customer_id = webhost_current_customer() OR webhost_is_operator()` made PostgreSQL call both
-- settings functions for every row it filtered (counting a customer's 625 vehicles: 0.187 ms);
-- as scalar subqueries they become InitPlans, computed once per statement, and the per-row test
-- is a comparison with a parameter (0.074 ms). Same rule, same settings, same results.

-- One home for the rule: (re)creates the policy of a tenant table (`p_column` names its customer).
CREATE FUNCTION webhost_tenant_policy(p_table regclass, p_column text DEFAULT 'customer_id') RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %s', p_table);
    EXECUTE format('CREATE POLICY tenant_isolation ON %s '
                   'USING (%2$I = (SELECT webhost_current_customer()) OR (SELECT webhost_is_operator())) '
                   'WITH CHECK (%2$I = (SELECT webhost_current_customer()) OR (SELECT webhost_is_operator()))',
                   p_table, p_column);
END
$$;

CREATE OR REPLACE FUNCTION webhost_enable_tenant_isolation(p_table regclass) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', p_table);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', p_table);
    PERFORM webhost_tenant_policy(p_table);
END
$$;

-- Day partitions made from now on get the rule through webhost_enable_tenant_isolation.
CREATE OR REPLACE FUNCTION webhost_ensure_day_partitions(p_table text, p_from date, p_to date) RETURNS integer
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
                PERFORM webhost_enable_tenant_isolation(format('public.%I', part)::regclass);
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

-- Every existing tenant_isolation policy (tables, day partitions, later tables) gets the new form.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS tbl, c.relname
             FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
             WHERE p.polname = 'tenant_isolation' AND c.relnamespace = 'public'::regnamespace
    LOOP
        PERFORM webhost_tenant_policy(r.tbl, CASE WHEN r.relname = 'customers' THEN 'id' ELSE 'customer_id' END);
    END LOOP;
END
$$;
