-- Credentials at rest are sealed by the application (AES-GCM under ENCRYPTION_KEY, storage/sealing.py):
-- these columns hold `sealed:v1:<key id>:<data>` only. SQL cannot encrypt with the application's
-- key, so rows written before this migration are sealed by the first node that starts after it
-- (storage.sealed_columns.reseal, from Runtime.start). The checks are NOT VALID: they leave those
-- rows to that step and refuse every new or updated plaintext value (an older node still writing
-- one fails loudly instead of storing a password in the clear).

ALTER TABLE deployments ADD CONSTRAINT deployments_database_url_sealed
    CHECK (database_url IS NULL OR database_url LIKE 'sealed:v1:%') NOT VALID;
ALTER TABLE deployments ADD CONSTRAINT deployments_provisioned_url_sealed
    CHECK (provisioned_url IS NULL OR provisioned_url LIKE 'sealed:v1:%') NOT VALID;
ALTER TABLE deployments ADD CONSTRAINT deployments_config_sealed
    CHECK ((NOT config ? 'password' OR config->>'password' LIKE 'sealed:v1:%')
       AND (NOT config ? 'redis_url' OR config->>'redis_url' LIKE 'sealed:v1:%')) NOT VALID;
ALTER TABLE tenant_migrations ADD CONSTRAINT tenant_migrations_source_url_sealed
    CHECK (source_url IS NULL OR source_url LIKE 'sealed:v1:%') NOT VALID;
