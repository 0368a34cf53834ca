-- The four plans of the seed design. gps_points_per_day and geofence_limit scale with the tier:
--   points/day = 50,000 per vehicle allowed (a fix every ~2 s for a day), geofences = 4x vehicles.
INSERT INTO plans (id, name, price_cents, vehicle_limit, driver_limit, geofence_limit, gps_points_per_day,
                   retention_days, connection_limit) VALUES
    ('hobby',        'Hobby',         1500,   5,   5,    20,    250000,  30,   50),
    ('starter',      'Starter',       4900,  25,  25,   100,   1250000,  90,  250),
    ('professional', 'Professional', 14900, 100, 100,   400,   5000000, 365, 1000),
    ('business',     'Business',     39900, 500, 500,  2000,  25000000, 730, 5000)
ON CONFLICT (id) DO NOTHING;
