-- The application role logs in by itself, and its tenant / operator scope is signed.
--
-- Until now the server connected as the owner and became webhost_app through a start-up setting:
-- `RESET ROLE` gave the owner back, and any statement could `set_config('app.operator', 'on')` or
-- set another tenant's id. Now the serving pools log in as webhost_app (LOGIN, member of no role,
-- owns nothing), and the policy functions trust a scope only when it carries an HMAC made with a
-- key that only the owner can read (installed by storage.database from SECRET_KEY at start):
--
--   app.scope = 'tenant|<customer uuid>|<not after, unix s>|<hex hmac>'  or  'operator|*|<not after>|<hex hmac>'
--   hmac = HMAC-SHA256(key, 'tenant|<uuid>|<not after>'), computed with core sha256() from the key's
--          precomputed inner and outer pads (no pgcrypto).
--
-- A token is valid only until its not-after time (compared with now(): the transaction's start), so
-- a token read inside a scope cannot be replayed for long. The plain settings app.customer_id /
-- app.operator still count for roles that can read the key (the owner and its SECURITY DEFINER
-- lookups, which run with `SET app.operator = 'on'`): whoever can read the key can sign anyway.

DO $$
BEGIN
    IF NOT (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'webhost_app') THEN
        BEGIN
            ALTER ROLE webhost_app LOGIN;
        EXCEPTION WHEN OTHERS THEN
            -- another database of the same cluster migrating at the same instant ("tuple concurrently
            -- updated"); anything else (no CREATEROLE) is the operator's to fix: README, "Database roles"
            PERFORM pg_sleep(0.2);
            IF NOT (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'webhost_app') THEN
                RAISE;
            END IF;
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_auth_members WHERE member = 'webhost_app'::regrole) THEN
        RAISE WARNING 'webhost_app is a member of another role; the server refuses to serve until it is not';
    END IF;
END
$$;

-- One row: the key's inner and outer pads (key padded to 64 bytes, XOR 0x36 / 0x5c).
CREATE TABLE webhost_scope_key (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    inner_pad bytea NOT NULL CHECK (length(inner_pad) = 64),
    outer_pad bytea NOT NULL CHECK (length(outer_pad) = 64),
    installed_at timestamptz NOT NULL DEFAULT now()
);
-- The default privileges of 0002 granted it to the application role: taken back.
REVOKE ALL ON webhost_scope_key FROM PUBLIC, webhost_app;

-- The verified subject of app.scope for `p_kind`, or NULL (no, other kind, expired or forged token;
-- a malformed one of the right kind fails its cast or decode: an error, which shows nothing either).
-- The MACs are compared through sha256 so that the comparison's time says nothing about the key.
-- PL/pgSQL because it keeps its plans for the session: a plain SQL function is parsed and planned
-- again in every query that calls it (measured ~250 us per query on a loaded 2-core machine, against
-- ~20-40 us here); few statements, since each costs (a regex check of the format alone cost ~40 us).
CREATE FUNCTION webhost_signed_scope(p_kind text) RETURNS text
    LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    s text := current_setting('app.scope', true);
    k record;
BEGIN
    IF split_part(s, '|', 1) IS DISTINCT FROM p_kind THEN
        RETURN NULL;
    END IF;
    SELECT inner_pad, outer_pad INTO k FROM public.webhost_scope_key;
    IF split_part(s, '|', 3)::bigint >= extract(epoch FROM now())
       AND sha256(sha256(k.outer_pad || sha256(k.inner_pad || convert_to(left(s, -65), 'UTF8'))))
           = sha256(decode(split_part(s, '|', 4), 'hex')) THEN
        RETURN split_part(s, '|', 2);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION webhost_signed_scope(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhost_signed_scope(text) TO webhost_app;

-- The functions every tenant_isolation policy calls (as InitPlans, once per query: 0060). Plain SQL
-- and invoker rights so that they inline and `has_table_privilege` asks about the role running the
-- query; every name is qualified because an inlined body is parsed with the caller's search_path.
CREATE OR REPLACE FUNCTION webhost_current_customer() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN pg_catalog.has_table_privilege('public.webhost_scope_key', 'SELECT')
                THEN CASE WHEN pg_catalog.current_setting('app.customer_id', true) OPERATOR(pg_catalog.<>) ''
                          THEN pg_catalog.current_setting('app.customer_id', true)::pg_catalog.uuid END
                ELSE public.webhost_signed_scope('tenant')::pg_catalog.uuid END
    $$;

CREATE OR REPLACE FUNCTION webhost_is_operator() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN pg_catalog.has_table_privilege('public.webhost_scope_key', 'SELECT')
                THEN coalesce(pg_catalog.current_setting('app.operator', true), '') OPERATOR(pg_catalog.=) 'on'
                ELSE public.webhost_signed_scope('operator') IS NOT NULL END
    $$;

-- The customer the scope names, *not* verified: only for TENANT_ROWS (storage.database), the index
-- condition that list and count queries add beside the policy. The policy checks the signature, so
-- a forged scope selects rows that the policy then hides; one verification per query, not two.
CREATE FUNCTION webhost_scope_customer() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN pg_catalog.split_part(pg_catalog.current_setting('app.scope', true), '|', 1) OPERATOR(pg_catalog.=) 'tenant'
                THEN pg_catalog.split_part(pg_catalog.current_setting('app.scope', true), '|', 2)::pg_catalog.uuid END
    $$;

-- The application role creates nothing either (PostgreSQL < 15 let PUBLIC create in schema public;
-- an object of its own there could shadow an operator or type in the inlined bodies above).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
