-- A create that checks its plan limit in one statement, one round trip instead of three (BEGIN +
-- scope + quota lock, the counting INSERT, COMMIT): storage.vehicles.insert.
--
-- The count must follow the quota lock: a statement's own snapshot is taken when it starts, before
-- any lock it takes, so a plain counting INSERT that locks would count without the row another
-- create committed while it waited. A VOLATILE PL/pgSQL function takes a new snapshot for each
-- statement it runs (READ COMMITTED), so the count below, made after pg_advisory_xact_lock
-- returned, sees every create that held the lock before. The lock lasts until the caller's
-- (implicit) transaction ends, i.e. past its INSERT.
--
-- Invoker rights: the count runs as the caller, under the tenant_isolation policy of its scope.
-- The lock key is storage.usage.quota_lock_key's, 'quota:<customer>:<resource>', made here from the
-- scope's customer (not verified: a forged scope only makes its own caller wait; the policy hides
-- every row from it and refuses its INSERT), so this path and storage.usage.lock_quota /
-- storage.plans.of_customer_locking exclude each other.
CREATE FUNCTION webhost_quota_count(p_resource text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    customer uuid := public.webhost_scope_customer();
BEGIN
    IF customer IS NULL THEN
        RAISE EXCEPTION 'webhost_quota_count needs a tenant scope' USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('quota:' || customer::text || ':' || p_resource, 0));
    CASE p_resource
        WHEN 'vehicles' THEN RETURN (SELECT count(*) FROM public.vehicles WHERE customer_id = customer);
        WHEN 'drivers' THEN RETURN (SELECT count(*) FROM public.drivers WHERE customer_id = customer);
        WHEN 'geofences' THEN RETURN (SELECT count(*) FROM public.geofences WHERE customer_id = customer);
    END CASE;  -- any other name: CASE_NOT_FOUND
END
$$;
