-- Stripe as the billing provider (issue 18; sync_server/domain/billing/stripe_sync.py, stripe_events.py).
-- Only used with STRIPE_SECRET_KEY set; without it these stay empty and billing is internal.
--
-- plans.stripe_price_id: the Stripe Price a plan is billed at (NULL: a free plan, no Stripe subscription).
-- customers.suspended_by: who suspended the customer, so a paid invoice reactivates only a customer
--   that billing suspended, never one an operator did.
-- billing_accounts: one row per customer: its Stripe ids, the outbox of changes to push to Stripe
--   (wanted_version > pushed_version: pending; attempts / next_attempt_at / last_error while Stripe
--   fails) and the subscription state the webhooks reported, with the event time it was applied at
--   (an older event never overwrites a newer state).
-- stripe_events: every webhook event received, once (a replayed event id is a no-op).
-- Both tables are control plane (shared database, storage.tenant_data.CONTROL_PLANE_TABLES) under the
-- tenant_isolation policy like subscriptions.

ALTER TABLE plans ADD COLUMN stripe_price_id text CHECK (stripe_price_id ~ '^[A-Za-z0-9_]{1,200}$');

ALTER TABLE customers ADD COLUMN suspended_by text CHECK (suspended_by IN ('operator', 'billing'));
UPDATE customers SET suspended_by = 'operator' WHERE status = 'suspended';

CREATE TABLE billing_accounts (
    customer_id             uuid PRIMARY KEY REFERENCES customers (id) ON DELETE CASCADE,
    stripe_customer_id      text UNIQUE CHECK (length(stripe_customer_id) <= 255),
    pushed_profile          text CHECK (length(pushed_profile) <= 64),  -- sha256 of the name and email Stripe has
    stripe_subscription_id  text CHECK (length(stripe_subscription_id) <= 255),
    stripe_item_id          text CHECK (length(stripe_item_id) <= 255),
    stripe_price_id         text CHECK (length(stripe_price_id) <= 255),
    cancel_at_period_end    boolean NOT NULL DEFAULT false,
    -- the outbox: what is still to be pushed to Stripe
    wanted_version          bigint NOT NULL DEFAULT 1,
    pushed_version          bigint NOT NULL DEFAULT 0,
    attempts                integer NOT NULL DEFAULT 0,
    next_attempt_at         timestamptz NOT NULL DEFAULT now(),
    lease_until             timestamptz,
    last_error              text CHECK (length(last_error) <= 500),
    pushed_at               timestamptz,
    -- what Stripe's webhooks said, and the `created` (unix seconds) of the event each came from
    subscription_status     text CHECK (length(subscription_status) <= 40),
    status_at               bigint NOT NULL DEFAULT 0,
    current_period_end      timestamptz,
    past_due_since          timestamptz,
    invoice_status          text CHECK (invoice_status IN ('paid', 'payment_failed')),
    invoice_at              bigint NOT NULL DEFAULT 0,
    -- the billing state the policy last suspended for ("<status_at>:<invoice_at>"): an operator who
    -- reactivates the customer is not overruled until Stripe reports something newer
    suspended_for           text CHECK (length(suspended_for) <= 64),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_accounts_pending_idx ON billing_accounts (next_attempt_at) WHERE pushed_version < wanted_version;
SELECT webhost_enable_tenant_isolation('billing_accounts');

CREATE TABLE stripe_events (
    id           text PRIMARY KEY CHECK (length(id) <= 255),
    type         text NOT NULL CHECK (length(type) <= 100),
    created      bigint NOT NULL,
    customer_id  uuid REFERENCES customers (id) ON DELETE SET NULL,
    object_id    text CHECK (length(object_id) <= 255),
    outcome      text NOT NULL CHECK (outcome IN ('applied', 'stale', 'ignored')),
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_events_customer_idx ON stripe_events (customer_id, received_at);
SELECT webhost_enable_tenant_isolation('stripe_events');
