-- The full schema of the seed design, in core PostgreSQL only (no citext, no pgcrypto, no PostGIS).
-- Every tenant table carries customer_id first in its keys and indexes.

-- Platform (operator) side ------------------------------------------------------------------

CREATE TABLE plans (
    id                  text PRIMARY KEY,                 -- 'hobby', 'starter', ...
    name                text NOT NULL,
    price_cents         integer NOT NULL CHECK (price_cents >= 0),
    currency            text NOT NULL DEFAULT 'usd',
    vehicle_limit       integer NOT NULL CHECK (vehicle_limit >= 0),
    driver_limit        integer NOT NULL CHECK (driver_limit >= 0),
    geofence_limit      integer NOT NULL CHECK (geofence_limit >= 0),
    gps_points_per_day  bigint  NOT NULL CHECK (gps_points_per_day >= 0),
    retention_days      integer NOT NULL CHECK (retention_days > 0),
    connection_limit    integer NOT NULL DEFAULT 100 CHECK (connection_limit > 0),
    features            jsonb NOT NULL DEFAULT '{}'::jsonb,
    is_public           boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE platform_users (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email          text NOT NULL,
    password_hash  text NOT NULL,
    role           text NOT NULL DEFAULT 'staff' CHECK (role IN ('admin', 'staff')),
    is_active      boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_login_at  timestamptz
);
CREATE UNIQUE INDEX platform_users_email_key ON platform_users (lower(email));

-- Operator session tokens: random, only their SHA-256 stored.
CREATE TABLE tokens (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash        bytea NOT NULL UNIQUE,
    platform_user_id  uuid NOT NULL REFERENCES platform_users (id) ON DELETE CASCADE,
    kind              text NOT NULL DEFAULT 'session',
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    revoked_at        timestamptz
);
CREATE INDEX tokens_user_idx ON tokens (platform_user_id);

-- Tenants -----------------------------------------------------------------------------------

CREATE TABLE customers (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug             text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name             text NOT NULL,
    email            text,
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    deployment_mode  text NOT NULL DEFAULT 'multi_tenant' CHECK (deployment_mode IN ('multi_tenant', 'single_tenant')),
    regions          text[] NOT NULL DEFAULT '{}',
    compliance       text[] NOT NULL DEFAULT '{}',
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX customers_email_key ON customers (lower(email)) WHERE email IS NOT NULL;

CREATE TABLE customer_users (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id    uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    email          text NOT NULL,
    name           text NOT NULL DEFAULT '',
    role           text NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member', 'viewer')),
    password_hash  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX customer_users_email_key ON customer_users (customer_id, lower(email));

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id   uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    name          text NOT NULL DEFAULT '',
    prefix        text NOT NULL,                    -- display prefix, e.g. whk_live_3xT9
    key_hash      bytea NOT NULL UNIQUE,            -- SHA-256 of the whole key; the key is never stored
    environment   text NOT NULL DEFAULT 'live' CHECK (environment IN ('live', 'test')),
    permissions   text[] NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX api_keys_customer_idx ON api_keys (customer_id, created_at);

CREATE TABLE subscriptions (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id           uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    plan_id               text NOT NULL REFERENCES plans (id),
    status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'canceled', 'past_due')),
    current_period_start  timestamptz NOT NULL DEFAULT now(),
    current_period_end    timestamptz NOT NULL DEFAULT now() + interval '1 month',
    cancel_at_period_end  boolean NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL DEFAULT now(),
    canceled_at           timestamptz
);
CREATE UNIQUE INDEX subscriptions_one_active ON subscriptions (customer_id) WHERE status = 'active';
CREATE INDEX subscriptions_customer_idx ON subscriptions (customer_id, created_at);

-- Fleet -------------------------------------------------------------------------------------

CREATE TABLE vehicles (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id         uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    name                text NOT NULL,
    vehicle_identifier  text NOT NULL,
    vehicle_type        text NOT NULL DEFAULT 'car',
    device_secret_hash  bytea,                      -- for tracker (OsmAnd) ingestion
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX vehicles_identifier_key ON vehicles (customer_id, vehicle_identifier);
CREATE UNIQUE INDEX vehicles_customer_id_key ON vehicles (customer_id, id);

CREATE TABLE drivers (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id     uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    name            text NOT NULL,
    email           text,
    phone           text,
    license_number  text,
    vehicle_id      uuid REFERENCES vehicles (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX drivers_customer_idx ON drivers (customer_id, created_at);
CREATE UNIQUE INDEX drivers_email_key ON drivers (customer_id, lower(email)) WHERE email IS NOT NULL;

-- Latest known position per vehicle ("where is everyone" without scanning positions).
CREATE TABLE vehicle_positions_latest (
    customer_id  uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    vehicle_id   uuid NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    time         timestamptz NOT NULL,
    lat          double precision NOT NULL,
    lng          double precision NOT NULL,
    speed        real,
    heading      real,
    accuracy     real,
    altitude     real,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, vehicle_id)
);

CREATE TABLE geofences (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id    uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    name           text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('circle', 'polygon')),
    center_lat     double precision CHECK (center_lat BETWEEN -90 AND 90),
    center_lng     double precision CHECK (center_lng BETWEEN -180 AND 180),
    radius_meters  double precision CHECK (radius_meters > 0),
    polygon        jsonb,                           -- GeoJSON Polygon
    min_lat        double precision,                -- bounding box for the pre-check
    min_lng        double precision,
    max_lat        double precision,
    max_lng        double precision,
    active         boolean NOT NULL DEFAULT true,
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'circle' AND center_lat IS NOT NULL AND center_lng IS NOT NULL AND radius_meters IS NOT NULL)
        OR (kind = 'polygon' AND polygon IS NOT NULL))
);
CREATE INDEX geofences_customer_idx ON geofences (customer_id, created_at);

CREATE TABLE geofence_events (
    id           bigserial,
    customer_id  uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    geofence_id  uuid NOT NULL REFERENCES geofences (id) ON DELETE CASCADE,
    vehicle_id   uuid NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    event        text NOT NULL CHECK (event IN ('enter', 'exit')),
    time         timestamptz NOT NULL,
    lat          double precision NOT NULL,
    lng          double precision NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, id),
    UNIQUE (customer_id, vehicle_id, geofence_id, time, event)
);
CREATE INDEX geofence_events_time_idx ON geofence_events (customer_id, time);

CREATE TABLE routes (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id  uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    name         text NOT NULL,
    geometry     jsonb NOT NULL,                    -- GeoJSON LineString
    vehicle_id   uuid REFERENCES vehicles (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX routes_customer_idx ON routes (customer_id, created_at);

-- Provisioning ------------------------------------------------------------------------------

CREATE TABLE deployments (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id     uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    mode            text NOT NULL CHECK (mode IN ('multi_tenant', 'single_tenant')),
    infrastructure  text NOT NULL CHECK (infrastructure IN ('local', 'flyio', 'hetzner')),
    status          text NOT NULL DEFAULT 'provisioning'
                    CHECK (status IN ('provisioning', 'active', 'migrating', 'failed', 'decommissioned')),
    region          text,
    database_url    text,
    config          jsonb NOT NULL DEFAULT '{}'::jsonb,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX deployments_one_active ON deployments (customer_id)
    WHERE status IN ('provisioning', 'active', 'migrating');

CREATE TABLE infrastructure_events (
    id             bigserial,
    customer_id    uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    deployment_id  uuid REFERENCES deployments (id) ON DELETE CASCADE,
    step           text NOT NULL,
    status         text NOT NULL CHECK (status IN ('started', 'progress', 'succeeded', 'failed')),
    data           jsonb NOT NULL DEFAULT '{}'::jsonb,
    error          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, id)
);
CREATE INDEX infrastructure_events_deployment_idx ON infrastructure_events (customer_id, deployment_id, id);

-- Document store: append-only update log + compacted snapshots ------------------------------

CREATE TABLE doc_updates (
    customer_id  uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    doc          text NOT NULL,
    seq          bigserial,
    update       bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, doc, seq)
);

CREATE TABLE doc_snapshots (
    customer_id   uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    doc           text NOT NULL,
    state         bytea NOT NULL,                   -- the whole document as one Yjs update
    upto_seq      bigint NOT NULL,                  -- every log entry <= this is merged in
    update_count  bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, doc)
);

-- Time series: gps_positions and usage_metrics ----------------------------------------------
-- With the timescaledb extension: hypertables (1-day chunks for positions) with compression
-- (segment by customer_id, vehicle_id; order by time desc) and a retention policy. Without it
-- (embedded PostgreSQL, the tested path): native range partitioning by day; the server creates
-- partitions ahead of time and drops those past the longest plan retention (storage/partitions.py).
-- Both keep a unique key on (customer_id, vehicle_id, time) so materialization is idempotent.

DO $$
DECLARE
    has_timescale boolean := EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb');
BEGIN
    IF has_timescale THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        CREATE TABLE gps_positions (
            customer_id  uuid NOT NULL,
            vehicle_id   uuid NOT NULL,
            time         timestamptz NOT NULL,
            lat          double precision NOT NULL,
            lng          double precision NOT NULL,
            speed        real,
            heading      real,
            accuracy     real,
            altitude     real,
            source       text NOT NULL DEFAULT 'doc',
            received_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (customer_id, vehicle_id, time)
        );
        CREATE TABLE usage_metrics (
            customer_id  uuid NOT NULL,
            time         timestamptz NOT NULL,
            metric       text NOT NULL,
            value        bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (customer_id, metric, time)
        );
        PERFORM create_hypertable('gps_positions', 'time', chunk_time_interval => interval '1 day');
        PERFORM create_hypertable('usage_metrics', 'time', chunk_time_interval => interval '7 days');
        EXECUTE 'ALTER TABLE gps_positions SET (timescaledb.compress, '
             || 'timescaledb.compress_segmentby = ''customer_id, vehicle_id'', '
             || 'timescaledb.compress_orderby = ''time DESC'')';
        PERFORM add_compression_policy('gps_positions', interval '7 days');
        PERFORM add_retention_policy('gps_positions', interval '730 days');
        PERFORM add_retention_policy('usage_metrics', interval '730 days');
    ELSE
        CREATE TABLE gps_positions (
            customer_id  uuid NOT NULL,
            vehicle_id   uuid NOT NULL,
            time         timestamptz NOT NULL,
            lat          double precision NOT NULL,
            lng          double precision NOT NULL,
            speed        real,
            heading      real,
            accuracy     real,
            altitude     real,
            source       text NOT NULL DEFAULT 'doc',
            received_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (customer_id, vehicle_id, time)
        ) PARTITION BY RANGE (time);
        CREATE TABLE usage_metrics (
            customer_id  uuid NOT NULL,
            time         timestamptz NOT NULL,
            metric       text NOT NULL,
            value        bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (customer_id, metric, time)
        ) PARTITION BY RANGE (time);
    END IF;
END
$$;

-- The time-series backend in use, so code can tell without probing the catalog each time.
CREATE TABLE storage_features (
    name   text PRIMARY KEY,
    value  text NOT NULL
);
INSERT INTO storage_features (name, value)
SELECT 'timeseries', CASE WHEN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
                          THEN 'timescaledb' ELSE 'native' END;
