-- GPS tracking: materialization progress per track document, and the indexes the pipeline and
-- the tracking REST queries lean on.

-- How far each track document has been materialized: `elements` array elements of its Y.Array
-- `points` (a prefix: clients only append). Written in the same transaction as the rows, usage and
-- geofence events of a batch, so after a crash the server resumes exactly where it stopped.
CREATE TABLE track_progress (
    customer_id  uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    doc          text NOT NULL,
    vehicle_id   uuid NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    elements     bigint NOT NULL CHECK (elements >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, doc)
);
ALTER TABLE track_progress ENABLE ROW LEVEL SECURITY;
ALTER TABLE track_progress FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON track_progress
    USING (customer_id = webhost_current_customer() OR webhost_is_operator())
    WITH CHECK (customer_id = webhost_current_customer() OR webhost_is_operator());

-- Geofence events of one vehicle over a time window (recomputed when a backfill lands in it).
CREATE INDEX geofence_events_vehicle_time_idx ON geofence_events (customer_id, vehicle_id, time);

-- Tracker ingestion without a customer in the URL: the device secret (random, 192 bits) names the
-- vehicle. Found before the tenant is known, like API keys; returns the minimum. Customers on a
-- dedicated database are found through the URL form with their slug instead.
CREATE INDEX vehicles_device_secret_idx ON vehicles (device_secret_hash) WHERE device_secret_hash IS NOT NULL;

CREATE FUNCTION webhost_find_device(p_hash bytea)
    RETURNS TABLE (customer_id uuid, customer_status text, vehicle_id uuid, vehicle_identifier text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    SET app.operator = 'on'
    AS $$
        SELECT v.customer_id, c.status, v.id, v.vehicle_identifier
        FROM vehicles v JOIN customers c ON c.id = v.customer_id
        WHERE v.device_secret_hash = p_hash
    $$;
