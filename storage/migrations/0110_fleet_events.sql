-- Fleet events beyond geofences (issue 17): overspeed, trips and stops, device offline/online,
-- quota reached; trips and stops as rows; per-customer thresholds. All tenant data (classified in
-- storage/tenant_data.py), under the same tenant_isolation policy as every tenant table.
--
-- Every vehicle event row remembers `decided_ms`: the time of the fix whose processing produced it
-- (NULL: decided on server time, the open gap's device.offline). A backfill recomputes the events
-- decided by the fixes of its window and replaces exactly those (domain/tracking/fleet_events.py).

-- Thresholds per customer (missing keys take the defaults of domain/tracking/thresholds.py).
CREATE TABLE tracking_settings (
    customer_id  uuid PRIMARY KEY REFERENCES customers (id) ON DELETE CASCADE,
    settings     jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE fleet_events (
    id           bigserial,
    customer_id  uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    vehicle_id   uuid REFERENCES vehicles (id) ON DELETE CASCADE,   -- NULL: a customer event (quota.reached)
    type         text NOT NULL CHECK (length(type) <= 64),
    time         timestamptz NOT NULL,
    lat          double precision,
    lng          double precision,
    data         jsonb NOT NULL DEFAULT '{}'::jsonb,
    decided_ms   bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, id)
);
CREATE INDEX fleet_events_vehicle_decided_idx ON fleet_events (customer_id, vehicle_id, decided_ms);
CREATE INDEX fleet_events_time_idx ON fleet_events (customer_id, time, id);
CREATE UNIQUE INDEX fleet_events_customer_once ON fleet_events (customer_id, type, time) WHERE vehicle_id IS NULL;

-- One row per trip: open while end_time IS NULL (the vehicle is on its way).
CREATE TABLE trips (
    customer_id  uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    vehicle_id   uuid NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    start_time   timestamptz NOT NULL,
    end_time     timestamptz,
    start_lat    double precision NOT NULL,
    start_lng    double precision NOT NULL,
    end_lat      double precision NOT NULL,
    end_lng      double precision NOT NULL,
    distance_m   double precision NOT NULL,
    duration_s   double precision NOT NULL,
    max_speed    double precision NOT NULL,   -- m/s
    avg_speed    double precision NOT NULL,   -- m/s: distance / duration
    path         jsonb NOT NULL,              -- simplified [[lng, lat], ...]
    PRIMARY KEY (customer_id, vehicle_id, start_time)
);
CREATE INDEX trips_customer_time_idx ON trips (customer_id, start_time);

-- One row per stop; `confirmed_ms` and `state` are the analysis checkpoint a backfill restarts from.
CREATE TABLE stops (
    customer_id   uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    vehicle_id    uuid NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    start_time    timestamptz NOT NULL,
    end_time      timestamptz,
    lat           double precision NOT NULL,
    lng           double precision NOT NULL,
    duration_s    double precision NOT NULL,
    confirmed_ms  bigint NOT NULL,
    state         text NOT NULL,
    PRIMARY KEY (customer_id, vehicle_id, start_time)
);
CREATE INDEX stops_customer_time_idx ON stops (customer_id, start_time);
CREATE INDEX stops_vehicle_confirmed_idx ON stops (customer_id, vehicle_id, confirmed_ms);

-- The analysis state after a vehicle's last stored fix (live batches continue from it).
CREATE TABLE motion_state (
    customer_id   uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    vehicle_id    uuid NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    last_ms       bigint NOT NULL,
    state         text NOT NULL,
    offline_ms    bigint,                     -- the open gap's device.offline was recorded at this time
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, vehicle_id)
);
CREATE INDEX motion_state_last_idx ON motion_state (last_ms) WHERE offline_ms IS NULL;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tracking_settings', 'fleet_events', 'trips', 'stops', 'motion_state'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I '
                       'USING (customer_id = (SELECT webhost_current_customer()) OR (SELECT webhost_is_operator())) '
                       'WITH CHECK (customer_id = (SELECT webhost_current_customer()) OR (SELECT webhost_is_operator()))', t);
    END LOOP;
END
$$;
