-- Sessions of customer users signed in to the dispatcher web app (/app/): a random token in an
-- HttpOnly cookie, stored only as its SHA-256. Tenant data (it moves with the customer's database,
-- storage.tenant_data), under the tenant_isolation policy like every tenant table. Ending a session
-- (sign-out, a password change, the user deleted) takes effect on the next request: each request
-- reads its row.
CREATE TABLE customer_user_sessions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id   uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES customer_users (id) ON DELETE CASCADE,
    token_hash    bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    user_agent    text NOT NULL DEFAULT '' CHECK (length(user_agent) <= 300)
);
CREATE INDEX customer_user_sessions_user_idx ON customer_user_sessions (customer_id, user_id);
SELECT webhost_enable_tenant_isolation('customer_user_sessions');
