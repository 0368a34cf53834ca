-- REST API: indexes for cursor pagination ((created_at, id) order) and operator session look-ups.

CREATE INDEX customers_created_idx ON customers (created_at, id);
CREATE INDEX customers_status_created_idx ON customers (status, created_at, id);
CREATE INDEX vehicles_customer_created_idx ON vehicles (customer_id, created_at, id);
CREATE INDEX customer_users_customer_created_idx ON customer_users (customer_id, created_at, id);
CREATE INDEX subscriptions_plan_idx ON subscriptions (plan_id) WHERE status = 'active';
CREATE INDEX tokens_expires_idx ON tokens (expires_at) WHERE revoked_at IS NULL;

-- A customer-facing sort order that is stable under equal timestamps.
DROP INDEX IF EXISTS drivers_customer_idx;
CREATE INDEX drivers_customer_idx ON drivers (customer_id, created_at, id);
DROP INDEX IF EXISTS geofences_customer_idx;
CREATE INDEX geofences_customer_idx ON geofences (customer_id, created_at, id);
