"""The role the server's pools log in as: not a superuser, member of no role, owner of nothing, so
SQL running on one of its connections can neither become the owner nor widen its tenant scope."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid

import asyncpg
import pytest

from storage import AppRole, Database, DatabaseRegistry, migrator
from storage.database import APP_ROLE, _check_app_role
from sync_server.config import Settings

from .conftest import TEST_SECRET
from .support import databases


def server_settings(database_url: str, tmp_path) -> Settings:
    """The settings `webhost-sync serve` builds from the test server's environment."""
    return Settings.from_env(
        {"DATABASE_URL": database_url, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": TEST_SECRET}
    )


@pytest.fixture
async def served(database_url, tmp_path):
    """A pool built the way the server builds its own: Settings -> AppRole -> Database."""
    settings = server_settings(database_url, tmp_path)
    db = await Database(settings.database_url, settings.app_role(), min_size=1, max_size=1).open()
    yield db
    await db.close()


async def _customer_with_vehicle(owner_url: str, slug: str) -> uuid.UUID:
    conn = await asyncpg.connect(owner_url)
    try:
        cid = await conn.fetchval("INSERT INTO customers (slug, name) VALUES ($1, $1) RETURNING id", slug)
        await conn.execute(
            "INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, $2, $2)", cid, f"{slug}-truck"
        )
        return cid
    finally:
        await conn.close()


async def test_the_pool_logs_in_as_the_application_role_without_privileges(served):
    async with served.connection() as conn:
        row = await conn.fetchrow(
            "SELECT current_user AS cur, session_user AS ses, r.rolsuper, r.rolcreaterole, r.rolbypassrls, "
            " r.rolcreatedb, (SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid) AS memberships, "
            " (SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid) AS owned "
            "FROM pg_roles r WHERE r.rolname = current_user"
        )
        assert (row["cur"], row["ses"]) == (APP_ROLE, APP_ROLE)
        assert not row["rolsuper"] and not row["rolcreaterole"] and not row["rolbypassrls"] and not row["rolcreatedb"]
        assert row["memberships"] == 0 and row["owned"] == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TABLE public.mine (x int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE SCHEMA mine")


async def test_reset_role_leaves_it_itself_and_set_role_to_the_owner_fails(served, database_url):
    owner = await asyncpg.connect(database_url)
    try:
        owner_role = await owner.fetchval("SELECT current_user")
    finally:
        await owner.close()
    async with served.connection() as conn:
        await conn.execute("RESET ROLE")
        assert await conn.fetchval("SELECT current_user") == APP_ROLE
        await conn.execute("SET ROLE NONE")
        assert await conn.fetchval("SELECT current_user") == APP_ROLE
        for target in {owner_role, "postgres"}:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f'SET ROLE "{target}"')
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f'SET SESSION AUTHORIZATION "{target}"')
        assert await conn.fetchval("SELECT current_user") == APP_ROLE


async def test_plain_settings_reveal_no_other_tenant(served, database_url):
    a = await _customer_with_vehicle(database_url, "alpha")
    b = await _customer_with_vehicle(database_url, "bravo")
    async with served.connection() as conn:  # session-wide, as SQL on a pooled connection could
        await conn.execute("SELECT set_config('app.operator', 'on', false)")
        await conn.execute("SELECT set_config('app.customer_id', $1, false)", str(a))
        assert await conn.fetchval("SELECT count(*) FROM vehicles") == 0
        assert await conn.fetchval("SELECT count(*) FROM customers") == 0
        assert await conn.fetchval("SELECT webhost_is_operator()") is False
        assert await conn.fetchval("SELECT webhost_current_customer()") is None
        await conn.execute("RESET app.operator; RESET app.customer_id")
    async with served.tenant(b) as conn:
        assert await conn.fetchval("SELECT count(*) FROM vehicles") == 1
        await conn.execute("SELECT set_config('app.operator', 'on', true)")
        await conn.execute("SELECT set_config('app.customer_id', $1, true)", str(a))
        assert await conn.fetch("SELECT customer_id FROM vehicles") == [(b,)]
        assert await conn.fetchval("SELECT count(*) FROM customers") == 1


async def test_a_scope_left_in_the_session_does_not_reach_the_next_transactions(served, database_url):
    """SQL that leaves a (valid) scope session-wide on a pooled connection: the next tenant() and
    platform() transactions on that connection set or clear the scope, and see nothing of it."""
    a = await _customer_with_vehicle(database_url, "alpha")
    b = await _customer_with_vehicle(database_url, "bravo")
    async with served.connection() as conn:
        await conn.execute("SELECT set_config('app.scope', $1, false)", served.role.tenant_scope(a))
        assert await conn.fetchval("SELECT count(*) FROM vehicles") == 1  # what it was given, no more
    for _ in range(3):  # the pool has one connection: each transaction gets the same one
        async with served.platform() as conn:
            assert await conn.fetchval("SELECT count(*) FROM vehicles") == 0
        async with served.tenant(b) as conn:
            assert await conn.fetch("SELECT customer_id FROM vehicles") == [(b,)]


def _forge(key: bytes, body: str) -> str:
    return body + "|" + hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


async def test_forged_altered_or_expired_scopes_show_nothing(served, database_url):
    a = await _customer_with_vehicle(database_url, "alpha")
    b = await _customer_with_vehicle(database_url, "bravo")
    until = int(time.time()) + 300
    good_b = served.role.tenant_scope(b)
    wrong_key = AppRole.from_secret("another-secret-key-0123456789abcdef0123").scope_key
    bad = {
        "other key": _forge(wrong_key, f"tenant|{a}|{until}"),
        "other key, operator": _forge(wrong_key, f"operator|*|{until}"),
        "subject swapped": good_b.replace(str(b), str(a)),
        "kind swapped": "operator|*|" + good_b.split("|", 2)[2],
        "expired": _forge(served.role.scope_key, f"tenant|{a}|{int(time.time()) - 1}"),
        "no mac": f"tenant|{a}|{until}|",
    }
    for name, scope in bad.items():
        async with served.tenant(b) as conn:
            try:
                await conn.execute("SELECT set_config('app.scope', $1, true)", scope)
                seen = await conn.fetch("SELECT customer_id FROM vehicles")
            except asyncpg.PostgresError:  # a malformed scope may fail its cast: refused just the same
                seen = []
            assert seen == [], name
    # the real thing, made the same way, works
    async with served.tenant(b) as conn:
        await conn.execute("SELECT set_config('app.scope', $1, true)", served.role.tenant_scope(a))
        assert await conn.fetch("SELECT customer_id FROM vehicles") == [(a,)]
    async with served.operator("test") as conn:
        assert await conn.fetchval("SELECT count(*) FROM vehicles") == 2


async def test_the_application_role_cannot_read_or_replace_the_key(served):
    async with served.connection() as conn:
        for sql in (
            "SELECT * FROM webhost_scope_key",
            "UPDATE webhost_scope_key SET inner_pad = inner_pad",
            "INSERT INTO webhost_scope_key (inner_pad, outer_pad) VALUES ('\\x00', '\\x00')",
            "DELETE FROM webhost_scope_key",
            "ALTER TABLE webhost_scope_key OWNER TO webhost_app",
            "CREATE OR REPLACE FUNCTION webhost_is_operator() RETURNS boolean LANGUAGE sql AS 'SELECT true'",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)


async def test_the_server_process_pool_is_the_application_role(server, database_url):
    owner = await asyncpg.connect(database_url)
    try:
        users = await owner.fetch(
            "SELECT usename, application_name FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await owner.close()
    serving = [r["usename"] for r in users if r["application_name"] == "webhost-sync"]
    assert serving and set(serving) == {APP_ROLE}, users
    assert not [r for r in users if r["application_name"] == "webhost-sync-owner"]  # closed after start


async def test_migrations_run_as_the_owner_only(fresh_database_url):
    applied = await migrator.migrate(fresh_database_url)
    assert applied and await migrator.migrate(fresh_database_url) == []
    role = AppRole.from_secret(TEST_SECRET)
    app = await asyncpg.connect(role.login_url(fresh_database_url))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("DROP TABLE vehicles")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("ALTER TABLE vehicles DISABLE ROW LEVEL SECURITY")
    finally:
        await app.close()


async def test_a_pool_that_logs_in_as_the_owner_is_refused(database_url):
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        with pytest.raises(RuntimeError, match="must be webhost_app"):
            await _check_app_role(pool, AppRole.from_secret(TEST_SECRET), "shared")
    finally:
        await pool.close()


async def test_dedicated_databases_use_the_same_role_model(served, pg_admin_url):
    dedicated = await databases.create_database(pg_admin_url, prefix="wh_dedicated")
    try:
        await migrator.migrate(dedicated)
        registry = DatabaseRegistry(served)
        async with registry.standalone(dedicated) as db:
            async with db.connection() as conn:
                await conn.execute("RESET ROLE")
                assert await conn.fetchval("SELECT current_user") == APP_ROLE
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute("SET ROLE postgres")
            cid = uuid.uuid4()
            async with db.operator("test") as conn:  # the key was installed there when the pool opened
                await conn.execute("INSERT INTO customers (id, slug, name) VALUES ($1, 'solo', 'solo')", cid)
            async with db.tenant(cid) as conn:
                assert await conn.fetchval("SELECT count(*) FROM customers") == 1
            async with db.platform() as conn:
                await conn.execute("SELECT set_config('app.operator', 'on', true)")
                assert await conn.fetchval("SELECT count(*) FROM customers") == 0
    finally:
        await databases.drop_database(pg_admin_url, dedicated)


async def test_another_secret_key_takes_the_database_over(database_url, tmp_path):
    """One key per database: a node with another SECRET_KEY installs its own, and the scope of the
    first no longer counts (README: rotating SECRET_KEY restarts every node)."""
    cid = await _customer_with_vehicle(database_url, "alpha")
    first = await Database(database_url, AppRole.from_secret(TEST_SECRET), min_size=1, max_size=1).open()
    try:
        async with first.tenant(cid) as conn:
            assert await conn.fetchval("SELECT count(*) FROM vehicles") == 1
        second = await Database(
            database_url, AppRole.from_secret("rotated-" + TEST_SECRET), min_size=1, max_size=1
        ).open()
        await second.close()
        async with first.tenant(cid) as conn:
            assert await conn.fetchval("SELECT count(*) FROM vehicles") == 0
    finally:
        await first.close()


async def test_a_one_off_command_with_another_secret_key_leaves_the_servers_key(database_url):
    """create-operator opens its pool with install_key=False: platform tables work, the servers'
    tenant scope keeps working."""
    cid = await _customer_with_vehicle(database_url, "alpha")
    serving = await Database(database_url, AppRole.from_secret(TEST_SECRET), min_size=1, max_size=1).open()
    try:
        other = await Database(
            database_url, AppRole.from_secret("rotated-" + TEST_SECRET), min_size=1, max_size=1
        ).open(install_key=False)
        try:
            async with other.platform() as conn:
                assert await conn.fetchval("SELECT count(*) FROM plans") > 0
        finally:
            await other.close()
        async with serving.tenant(cid) as conn:
            assert await conn.fetchval("SELECT count(*) FROM vehicles") == 1
    finally:
        await serving.close()


def test_login_url_keeps_the_server_and_replaces_the_user():
    role = AppRole(b"k" * 32, password="p@ss/word")
    assert (
        role.login_url("postgresql://owner:secret@db.example.com:6432/fleet?sslmode=require")
        == "postgresql://webhost_app:p%40ss%2Fword@db.example.com:6432/fleet?sslmode=require"
    )
    nopw = AppRole(b"k" * 32)
    assert (
        nopw.login_url("postgresql://postgres:@/webhost_sync?host=/tmp/pg")
        == "postgresql://webhost_app@/webhost_sync?host=%2Ftmp%2Fpg"
    )
    assert (
        nopw.login_url("postgresql:///fleet?host=/run/postgresql&user=owner&password=x")
        == "postgresql://webhost_app@/fleet?host=%2Frun%2Fpostgresql"
    )
    assert "secret" not in repr(AppRole.from_secret("secret" * 8, password="secret"))


def test_the_scope_key_is_not_the_token_key():
    role = AppRole.from_secret(TEST_SECRET)
    assert role.scope_key != TEST_SECRET.encode() and len(role.scope_key) == 32
    scope = role.tenant_scope(uuid.UUID(int=1))
    kind, subject, until, mac = scope.split("|")
    assert (kind, subject) == ("tenant", str(uuid.UUID(int=1))) and int(until) > time.time()
    with pytest.raises(ValueError):
        role.tenant_scope("x'); SELECT 1; --")


def test_concurrent_opens_share_one_key(database_url):
    async def run():
        dbs = [Database(database_url, AppRole.from_secret(TEST_SECRET), min_size=1, max_size=1) for _ in range(4)]
        await asyncio.gather(*(d.open() for d in dbs))
        for d in dbs:
            async with d.operator("test") as conn:
                assert await conn.fetchval("SELECT webhost_is_operator()") is True
            await d.close()

    asyncio.run(run())
