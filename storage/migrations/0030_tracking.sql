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
