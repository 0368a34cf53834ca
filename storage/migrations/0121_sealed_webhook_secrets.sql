-- Webhook signing secrets are sealed like every stored credential (storage/sealing.py, written by
-- storage/webhooks.py): the check refuses new plaintext; rows from before are sealed at start-up
-- (storage.sealed_columns.reseal), as for 0120.
ALTER TABLE webhook_endpoints ADD CONSTRAINT webhook_endpoints_secret_sealed
    CHECK (secret LIKE 'sealed:v1:%') NOT VALID;

-- The webhook backlog for the metrics (webhost_webhook_queue_depth / _oldest_pending_seconds): two
-- numbers across every customer, no row and no customer id leaves the function.
CREATE FUNCTION webhost_webhook_backlog()
    RETURNS TABLE (pending bigint, oldest_seconds double precision)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    SET app.operator = 'on'
    AS $$
        SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::double precision
        FROM webhook_outbox WHERE status = 'pending'
    $$;
REVOKE ALL ON FUNCTION webhost_webhook_backlog() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhost_webhook_backlog() TO webhost_app;
