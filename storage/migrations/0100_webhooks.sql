-- Webhooks (issue 17): a customer's endpoints, the durable outbox of messages to deliver to them,
-- and the log of every delivery attempt. All three are tenant data (RLS, storage.tenant_data).
--
-- The outbox is written in the same transaction as the events it announces (domain/webhooks/outbox.py
-- `publish`); one row per (message, endpoint). A delivery worker on every node claims due rows
-- with FOR UPDATE SKIP LOCKED and a lease (lease_until), delivers outside the transaction, and
-- records the outcome only while its claim (attempts) is still the current one: a node killed
-- mid-delivery loses nothing (the lease runs out and another node delivers), and two nodes never
-- hold the same row at once.

CREATE TABLE webhook_endpoints (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id     uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    url             text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    events          text[] NOT NULL CHECK (cardinality(events) BETWEEN 1 AND 64),
    description     text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    -- the signing secret (`whsec_` + base64): needed in clear to sign. Read and written only by
    -- storage.webhooks.secret_of / insert / rotate (issue 18 encrypts it there).
    secret          text NOT NULL,
    enabled         boolean NOT NULL DEFAULT true,
    disabled_reason text,
    disabled_at     timestamptz,
    failing_since   timestamptz,          -- first failure of the current run of failures (NULL: healthy)
    failures        integer NOT NULL DEFAULT 0 CHECK (failures >= 0),  -- failed attempts in that run
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_customer_idx ON webhook_endpoints (customer_id, created_at, id);

CREATE TABLE webhook_outbox (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq             bigserial NOT NULL,   -- publish order: deliveries per (endpoint, ordering_key) follow it
    customer_id     uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    message_id      uuid NOT NULL,        -- the webhook-id (msg_...): the same for every endpoint and attempt
    event_type      text NOT NULL CHECK (length(event_type) BETWEEN 1 AND 100),
    body            text NOT NULL,        -- the JSON POSTed, exactly as signed: {"type","timestamp","data"}
    occurred_at     timestamptz NOT NULL,
    ordering_key    text CHECK (length(ordering_key) <= 200),
    dedupe_key      text CHECK (length(dedupe_key) <= 300),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,   -- claims so far; also the claim's fencing token
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,          -- claimed by a node until then
    last_status     integer,              -- HTTP status of the last attempt (NULL: no answer)
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,          -- delivered or dead-lettered
    CONSTRAINT webhook_outbox_once UNIQUE (customer_id, endpoint_id, dedupe_key)
);
-- due rows across customers (the worker's cross-tenant look-up, webhost_webhook_due below)
CREATE INDEX webhook_outbox_due_idx ON webhook_outbox (next_attempt_at, customer_id) WHERE status = 'pending';
-- the head of each (endpoint, ordering key) queue
CREATE INDEX webhook_outbox_order_idx ON webhook_outbox (customer_id, endpoint_id, ordering_key, seq)
    WHERE status = 'pending';
-- the delivery log of an endpoint, newest first
CREATE INDEX webhook_outbox_log_idx ON webhook_outbox (customer_id, endpoint_id, created_at DESC, id DESC);
-- retention of finished rows
CREATE INDEX webhook_outbox_finished_idx ON webhook_outbox (finished_at) WHERE status <> 'pending';

CREATE TABLE webhook_attempts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id     uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    delivery_id     uuid NOT NULL REFERENCES webhook_outbox (id) ON DELETE CASCADE,
    attempt         integer NOT NULL,
    attempted_at    timestamptz NOT NULL DEFAULT now(),
    status_code     integer,
    error           text CHECK (length(error) <= 1000),
    response        text CHECK (length(response) <= 1000),  -- the start of the receiver's answer
    duration_ms     integer NOT NULL
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (customer_id, delivery_id, attempted_at);

ALTER TABLE webhook_endpoints ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhook_endpoints USING (customer_id = (SELECT webhost_current_customer()) OR (SELECT webhost_is_operator()))
    WITH CHECK (customer_id = (SELECT webhost_current_customer()) OR (SELECT webhost_is_operator()));
ALTER TABLE webhook_outbox ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhook_outbox USING (customer_id = (SELECT webhost_current_customer()) OR (SELECT webhost_is_operator()))
    WITH CHECK (customer_id = (SELECT webhost_current_customer()) OR (SELECT webhost_is_operator()));
ALTER TABLE webhook_attempts ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhook_attempts USING (customer_id = (SELECT webhost_current_customer()) OR (SELECT webhost_is_operator()))
    WITH CHECK (customer_id = (SELECT webhost_current_customer()) OR (SELECT webhost_is_operator()));

-- The delivery worker's one cross-tenant look-up: which customers have rows due now (ids only, like
-- the authentication look-ups of 0002); it then claims them in that customer's tenant transaction.
CREATE FUNCTION webhost_webhook_due(p_limit integer)
    RETURNS TABLE (customer_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    SET app.operator = 'on'
    AS $$
        SELECT DISTINCT o.customer_id
        FROM webhook_outbox o JOIN webhook_endpoints e ON e.id = o.endpoint_id AND e.enabled
        WHERE o.status = 'pending' AND o.next_attempt_at <= clock_timestamp()
          AND (o.lease_until IS NULL OR o.lease_until <= clock_timestamp())
        LIMIT p_limit
    $$;
REVOKE ALL ON FUNCTION webhost_webhook_due(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhost_webhook_due(integer) TO webhost_app;
