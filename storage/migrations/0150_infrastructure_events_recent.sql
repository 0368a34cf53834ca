-- The operator console lists infrastructure events of every customer, newest first
-- (storage.deployments.recent_events: ORDER BY id DESC LIMIT n, paged by id); the primary key
-- (customer_id, id) serves one customer's list only.
CREATE INDEX infrastructure_events_recent_idx ON infrastructure_events (id DESC);
