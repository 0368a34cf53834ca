-- geofence_events: referential integrity checked once per batch instead of three times per event.
--
-- A day's upload writes hundreds of events per 10,000 fixes, and each event row paid three foreign
-- key checks (customer, vehicle, geofence: one SPI query and one row lock each) plus four index
-- entries: 28-41 us of PostgreSQL CPU per event, 10-26 ms per batch (measured). Now:
--   * no foreign keys on geofence_events: the pipeline locks the batch's vehicle and geofences
--     FOR KEY SHARE in one statement before it writes events (storage.geofence_events.lock_parents;
--     the row locks a foreign key check would take, once per batch), and writes events only for
--     the ones it found, so a concurrent delete either waits for the batch or is seen by it;
--   * deleting a vehicle or a geofence deletes its events (statement triggers below; customers'
--     deletes reach them through vehicles' and geofences' own ON DELETE CASCADE), as the foreign
--     keys' ON DELETE CASCADE did, but scoped to the customer (the cascade's query scanned the
--     whole table for a geofence);
--   * the unique key leads with (customer_id, vehicle_id, time), so it also serves the pipeline's
--     window query and the separate (customer_id, vehicle_id, time) index goes.
-- 15 us per event afterwards (same measurement).

DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT conname FROM pg_constraint
             WHERE conrelid = 'geofence_events'::regclass AND contype IN ('f', 'u') LOOP
        EXECUTE format('ALTER TABLE geofence_events DROP CONSTRAINT %I', c.conname);
    END LOOP;
END
$$;

ALTER TABLE geofence_events ADD CONSTRAINT geofence_events_once UNIQUE (customer_id, vehicle_id, time, geofence_id, event);
DROP INDEX geofence_events_vehicle_time_idx;

-- The cascade: events of deleted vehicles and geofences go with them (whoever deletes: a tenant,
-- an operator, or a customer's own cascade).
CREATE FUNCTION webhost_delete_geofence_events() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    SET app.operator = 'on'
    AS $$
BEGIN
    IF TG_TABLE_NAME = 'geofences' THEN
        DELETE FROM geofence_events e USING gone g WHERE e.customer_id = g.customer_id AND e.geofence_id = g.id;
    ELSE
        DELETE FROM geofence_events e USING gone v WHERE e.customer_id = v.customer_id AND e.vehicle_id = v.id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER geofence_events_of_deleted_geofences AFTER DELETE ON geofences
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION webhost_delete_geofence_events();
CREATE TRIGGER geofence_events_of_deleted_vehicles AFTER DELETE ON vehicles
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION webhost_delete_geofence_events();
