"""Credentials at rest (storage/sealing.py, storage/sealed_columns.py): after provisioning and tenant
migrations no row of the database holds a plaintext URL with a password (every text and jsonb
column of every table is read directly); rows from before sealing are sealed at start; rotate-key
re-seals under the new key and the server still reaches the dedicated database."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import asyncpg
import pytest

from storage import deployments as store
from storage import sealing, webhooks
from sync_server.domain.provisioning import deployments, tenant_migration

from .support import cloud_api, tenants
from .support.runtime import provisioning_runtime
from .test_tenant_migration import wait_migration

EXE = str(Path(sys.executable).parent / "webhost-sync")
KEY_A = sealing.new_key()
KEY_B = sealing.new_key()
# scheme://user:password@ (a libpq or Redis URL that carries its password)
CREDENTIAL_URL = r"[a-z][a-z0-9+.-]*://[^/\s:@\"]+:[^@\s\"/]+@"


@pytest.fixture(autouse=True)
def _keep_the_test_keyring():
    """In-process runtimes install their keyring for the whole process: put the tests' one back."""
    ring = sealing.keyring()
    yield
    sealing.install(ring)


def _with_password(url: str, password: str) -> str:
    p = urlparse(url)
    return urlunparse(p._replace(netloc=f"{p.username or 'postgres'}:{password}@{p.hostname}:{p.port or 5432}"))


async def plaintext_credentials(url: str, needles: list[str]) -> list[tuple[str, str, str]]:
    """(table, column, value) of every text/varchar/jsonb/json/text[] cell of every table (as the
    owner: no row-level security) that holds a URL with a password or one of `needles`."""
    conn = await asyncpg.connect(url)
    try:
        cols = await conn.fetch(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_schema, table_name) "
            "WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' "
            "AND (c.data_type IN ('text', 'character varying', 'jsonb', 'json') OR c.udt_name = '_text')"
        )
        assert len(cols) > 20  # the scan reads the real schema, not an empty one
        hits = []
        for col in cols:
            t, c = '"' + col["table_name"] + '"', '"' + col["column_name"] + '"'
            rows = await conn.fetch(
                f"SELECT {c}::text AS v FROM {t} WHERE {c}::text ~ $1 OR {c}::text LIKE ANY($2::text[])",
                CREDENTIAL_URL,
                [f"%{n}%" for n in needles],
            )
            hits += [(col["table_name"], col["column_name"], r["v"]) for r in rows]
        return hits
    finally:
        await conn.close()


async def _raw(url: str, query: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def _webhook(rt, customer_id, signing: str):
    db = await rt.registry.for_customer(customer_id)  # a tenant table: on the customer's database
    async with db.tenant(customer_id) as conn:
        row = await webhooks.insert_endpoint(
            conn, customer_id, url="https://example.com/hook", events=["*"], description="", secret=signing
        )
    return row["id"]


async def test_after_provisioning_no_row_holds_a_plaintext_credential(database_url, tmp_path, pg_admin_url):
    password = "pw-" + secrets.token_hex(8)
    admin = _with_password(pg_admin_url, password)  # the test server trusts: the password is carried, not checked
    with cloud_api.RecordingApi(cloud_api.fly()) as api:
        async with provisioning_runtime(
            database_url, tmp_path / "data", admin, FLY_API_TOKEN="fly-token", FLY_API_URL=api.url
        ) as rt:
            moved = await tenants.seed_customer(database_url, slug="moved", gps_rows=200)
            up = await tenant_migration.start(rt, moved, "single_tenant")
            await wait_migration(rt, moved, up["id"], "switched", "cleaned")
            dep = await store.current(rt.db, moved)
            assert password in dep["database_url"]  # callers above storage see the opened URL
            assert (await rt.registry.for_customer(moved)).dsn == dep["database_url"]
            down = await tenant_migration.start(rt, moved, "multi_tenant")  # source_url: the dedicated URL
            await wait_migration(rt, moved, down["id"], "switched", "cleaned")
            assert password in (await store.get_migration(rt.db, moved, down["id"]))["source_url"]

            cloud = await tenants.seed_customer(database_url, slug="cloud", gps_rows=1)
            fly = await deployments.create(
                rt, customer_id=cloud, mode="single_tenant", infrastructure="flyio", config={"name": "cloud-db"}
            )
            for _ in range(400):
                fly = await store.get(rt.db, fly["id"])
                if fly["status"] != "provisioning":
                    break
                await asyncio.sleep(0.05)
            assert fly["status"] == "active", fly["error"]
            fly_password = fly["config"]["password"]
            assert len(fly_password) > 16 and fly_password in fly["provisioned_url"]
            shown = deployments.public(fly)  # the API's view: neither the password nor the config key
            assert fly_password not in str(shown) and "password" not in shown["config"]
            signing = "whsec_" + secrets.token_urlsafe(24)
            hook = await _webhook(rt, cloud, signing)
            async with rt.db.tenant(cloud) as conn:  # cloud is on the shared database (provisioned, not moved)
                assert await webhooks.secrets_of(conn, [hook]) == {hook: signing}

    hits = await plaintext_credentials(database_url, [password, fly_password, signing, signing[6:]])
    assert hits == [], f"plaintext credentials at rest: {hits}"
    sealed = await _raw(
        database_url,
        "SELECT database_url, provisioned_url, config->>'password' AS pw FROM deployments ORDER BY created_at",
    )
    values = [v for r in sealed for v in r.values() if v is not None]
    assert len(values) >= 3 and all(v.startswith("sealed:v1:") for v in values), values
    [source] = await _raw(database_url, "SELECT source_url FROM tenant_migrations WHERE id = $1", down["id"])
    assert source["source_url"].startswith("sealed:v1:")

    # the scan itself finds a plaintext URL with a password when one is there
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE scan_check (note text)")
        await conn.execute("INSERT INTO scan_check VALUES ($1)", admin)
    finally:
        await conn.close()
    assert [h[:2] for h in await plaintext_credentials(database_url, [])] == [("scan_check", "note")]


async def test_plaintext_rows_are_refused_on_write_and_sealed_at_start(database_url, tmp_path, pg_admin_url):
    cid = await tenants.seed_customer(database_url, slug="legacy", gps_rows=1)
    legacy = _with_password(database_url, "legacy-" + secrets.token_hex(6))
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.CheckViolationError):  # migration 0120: no new plaintext
            await conn.execute(
                "INSERT INTO deployments (customer_id, mode, infrastructure, status, database_url) "
                "VALUES ($1, 'single_tenant', 'local', 'active', $2)",
                cid,
                legacy,
            )
        # a row written before 0120: the NOT VALID check leaves existing rows to the start-up step
        checks = await conn.fetch(
            "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
            "WHERE conrelid = 'deployments'::regclass AND conname LIKE '%\\_sealed'"
        )
        assert len(checks) == 3
        async with conn.transaction():
            for check in checks:
                await conn.execute(f"ALTER TABLE deployments DROP CONSTRAINT {check['conname']}")
            await conn.execute(
                "INSERT INTO deployments (customer_id, mode, infrastructure, status, database_url, config) "
                "VALUES ($1, 'single_tenant', 'local', 'active', $2, $3)",
                cid,
                legacy,
                '{"password": "legacy-driver-pw"}',
            )
            for check in checks:  # as migration 0120 left them
                await conn.execute(f"ALTER TABLE deployments ADD CONSTRAINT {check['conname']} {check['def']}")
    finally:
        await conn.close()
    with pytest.raises(asyncpg.CheckViolationError):
        await _raw(database_url, 'UPDATE deployments SET config = \'{"password": "x"}\'')
    async with provisioning_runtime(database_url, tmp_path / "data", pg_admin_url) as rt:
        assert (await rt.registry.for_customer(cid)).dsn == legacy  # routed through the sealed row
        dep = await store.current(rt.db, cid)
        assert dep["config"]["password"] == "legacy-driver-pw"
    assert await plaintext_credentials(database_url, ["legacy-driver-pw"]) == []


async def test_rotate_key_reseals_every_value_and_the_server_still_reaches_the_dedicated_database(
    database_url, tmp_path, pg_admin_url
):
    cid = await tenants.seed_customer(database_url, slug="rotated", gps_rows=300)
    async with provisioning_runtime(
        database_url, tmp_path / "data", pg_admin_url, keep_databases=True, ENCRYPTION_KEY=KEY_A
    ) as rt:
        up = await tenant_migration.start(rt, cid, "single_tenant")
        await wait_migration(rt, cid, up["id"], "switched", "cleaned")
        dedicated = (await store.current(rt.db, cid))["database_url"]
        hook = await _webhook(rt, cid, "whsec_rotated-secret")
    ring_a, ring_b = sealing.Keyring.from_text(KEY_A), sealing.Keyring.from_text(KEY_B)

    async def stored() -> list[str]:
        rows = await _raw(
            database_url, "SELECT database_url, provisioned_url FROM deployments WHERE customer_id = $1", cid
        )
        return [v for r in rows for v in r.values() if v is not None]

    before = await stored()
    assert len(before) == 2 and all(f":{ring_a.primary_id}:" in v for v in before)

    env = {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp_path / "data"),
        "SECRET_KEY": "test-secret-key-0123456789abcdef0123456789",
        "ENCRYPTION_KEY": KEY_B,
        "ENCRYPTION_OLD_KEYS": KEY_A,
        "PATH": "",
    }
    result = subprocess.run([EXE, "rotate-key"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"deployments.database_url +1 re-sealed", result.stdout), result.stdout
    assert re.search(r"webhook_endpoints.secret +1 re-sealed", result.stdout), result.stdout
    assert f"every stored credential is sealed under key {ring_b.primary_id}" in result.stdout
    assert "ENCRYPTION_OLD_KEYS may now be emptied" in result.stdout
    assert KEY_A not in result.stdout + result.stderr and dedicated not in result.stdout + result.stderr
    after = await stored()
    assert all(f":{ring_b.primary_id}:" in v for v in after) and set(after).isdisjoint(before)
    with pytest.raises(sealing.SealError, match="neither ENCRYPTION_KEY nor ENCRYPTION_OLD_KEYS"):
        ring_a.open(after[0], f"deployments.database_url/{cid}")
    again = subprocess.run([EXE, "rotate-key"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and re.search(r"deployments.database_url +0 re-sealed", again.stdout)

    # a node with only the new key routes the customer to its dedicated database and reads its rows there
    async with provisioning_runtime(database_url, tmp_path / "data", pg_admin_url, ENCRYPTION_KEY=KEY_B) as rt:
        db = await rt.registry.for_customer(cid)
        assert db.dsn == dedicated and db is not rt.registry.shared
        async with db.tenant(cid) as conn:
            assert await conn.fetchval("SELECT count(*) FROM gps_positions WHERE customer_id = $1", cid) == 300
            assert await webhooks.secrets_of(conn, [hook]) == {hook: "whsec_rotated-secret"}  # re-sealed there


def test_sealed_values_are_bound_to_their_purpose_and_key():
    ring = sealing.Keyring.from_text(KEY_A)
    url = "postgresql://u:s3cret-password-value@h/db"  # long enough that random base64 never holds it
    sealed = ring.seal(url, "deployments.database_url/c1")
    assert re.fullmatch(r"sealed:v1:[0-9a-f]{16}:[A-Za-z0-9_-]+", sealed) and "s3cret-password-value" not in sealed
    assert ring.open(sealed, "deployments.database_url/c1") == url
    assert ring.seal("same", "p") != ring.seal("same", "p")  # a fresh nonce every time
    with pytest.raises(sealing.SealError, match="another purpose"):
        ring.open(sealed, "deployments.database_url/c2")  # copied into another customer's row
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(sealing.SealError):
        ring.open(tampered, "deployments.database_url/c1")
    with pytest.raises(sealing.SealError, match="not sealed"):
        ring.open("postgresql://u:pw@h/db", "deployments.database_url/c1")
    rotated = sealing.Keyring.from_text(KEY_B, KEY_A)
    assert rotated.open(sealed, "deployments.database_url/c1") == url
    assert not rotated.is_current(sealed) and rotated.is_current(rotated.seal("x", "p"))
    with pytest.raises(ValueError, match="32 bytes"):
        sealing.Keyring.from_text("c2hvcnQ")
