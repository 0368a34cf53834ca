"""PostgreSQL itself keeps tenants apart, even when code forgets to scope a query."""

import datetime as dt
import hashlib
import hmac
import json
import time
import uuid

import asyncpg
import pytest

from storage import AppRole, Database, sealing
from storage import vehicles as vehicle_store
from storage.database import SCOPE_SET, SCOPED_FROM
from storage.plans import LimitOf

from .conftest import TEST_SECRET


async def _customer(db, slug):
    async with db.operator("test_setup") as conn:
        return await conn.fetchval("INSERT INTO customers (slug, name) VALUES ($1, $1) RETURNING id", slug)


async def test_app_role_cannot_bypass_rls(db):
    async with db.platform() as conn:
        role = await conn.fetchrow(
            "SELECT current_user AS who, r.rolsuper, r.rolbypassrls FROM pg_roles r WHERE r.rolname = current_user"
        )
        owns = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname='public' AND tableowner=current_user"
        )
    assert role["who"] == "webhost_app"
    assert not role["rolsuper"] and not role["rolbypassrls"]
    assert owns == 0


async def test_query_without_customer_sees_no_rows(db):
    a = await _customer(db, "alpha")
    async with db.tenant(a) as conn:
        await conn.execute("INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, 'v', 'v1')", a)
        await conn.execute(
            "INSERT INTO gps_positions (customer_id, vehicle_id, time, lat, lng) "
            "SELECT $1, id, now(), 1, 1 FROM vehicles",
            a,
        )
    async with db.platform() as conn:  # no customer set: "code forgot"
        assert await conn.fetchval("SELECT count(*) FROM vehicles") == 0
        assert await conn.fetchval("SELECT count(*) FROM gps_positions") == 0
        assert await conn.fetchval("SELECT count(*) FROM customers") == 0
        # A partition read directly is guarded the same way.
        part = f"gps_positions_p{dt.datetime.now(dt.UTC):%Y%m%d}"
        assert await conn.fetchval(f'SELECT count(*) FROM "{part}"') == 0
    async with db.tenant(a) as conn:
        assert await conn.fetchval("SELECT count(*) FROM gps_positions") == 1


async def test_one_tenant_cannot_read_or_write_another(db):
    a = await _customer(db, "alpha")
    b = await _customer(db, "bravo")
    async with db.tenant(a) as conn:
        await conn.execute("INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, 'v', 'v1')", a)
    async with db.tenant(b) as conn:
        assert await conn.fetchval("SELECT count(*) FROM vehicles") == 0
        assert await conn.execute("UPDATE vehicles SET name = 'stolen'") == "UPDATE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, 'x', 'x')", a)


async def test_setting_does_not_leak_to_the_next_transaction(db):
    a = await _customer(db, "alpha")
    async with db.tenant(a) as conn:
        await conn.execute("INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, 'v', 'v1')", a)
    for _ in range(5):  # same pooled connections, new transactions
        async with db.platform() as conn:
            assert await conn.fetchval("SELECT count(*) FROM vehicles") == 0


async def test_authentication_lookups_find_only_what_they_must(db):
    a = await _customer(db, "alpha")
    key_hash = uuid.uuid4().bytes
    async with db.tenant(a) as conn:
        await conn.execute(
            "INSERT INTO api_keys (customer_id, prefix, key_hash, permissions) VALUES ($1, 'whk_live_ab', $2, '{admin}')",
            a,
            key_hash,
        )
    async with db.platform() as conn:
        row = await conn.fetchrow("SELECT * FROM webhost_find_api_key($1)", key_hash)
        assert row["customer_id"] == a and row["customer_slug"] == "alpha"
        assert await conn.fetchval("SELECT id FROM webhost_find_customer('alpha')") == a
        # the function's operator setting does not outlive the call
        assert await conn.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_tenant_transaction_rolls_back_on_error_and_takes_only_a_customer_id(db):
    """tenant() sends BEGIN with the setting in one query (the id written into it): a failure inside
    rolls everything back and leaves nothing behind; anything but a UUID is refused before SQL."""
    a = await _customer(db, "alpha")
    with pytest.raises(RuntimeError):
        async with db.tenant(a) as conn:
            await conn.execute("INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, 'v', 'v1')", a)
            raise RuntimeError("handler failed")
    with pytest.raises(asyncpg.UniqueViolationError):
        async with db.tenant(a) as conn:
            await conn.execute("INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, 'w', 'w')", a)
            await conn.execute("INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, 'w', 'w')", a)
    async with db.tenant(a) as conn:
        assert await conn.fetchval("SELECT count(*) FROM vehicles") == 0
        assert await conn.fetchval("SELECT webhost_current_customer()") == a
    for _ in range(3):  # the pooled connections are idle, outside any transaction, with no setting
        async with db.connection() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT coalesce(current_setting('app.scope', true), '')") == ""
    for bad in ("x'); SELECT set_config('app.operator', 'on', true); --", "", "not-a-uuid"):
        with pytest.raises(ValueError):
            async with db.tenant(bad):
                pass


async def test_sql_that_widens_its_own_scope_sees_no_other_tenant_in_any_table(db):
    """Every table under a tenant_isolation policy: as tenant B, SQL that sets the operator flag or
    A's id (the settings the policies read before they were signed) sees no row of A's."""
    a = await _customer(db, "alpha")
    b = await _customer(db, "bravo")
    async with db.tenant(a) as conn:
        vid = await conn.fetchval(
            "INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, 'v', 'v1') RETURNING id", a
        )
        await conn.execute(
            "INSERT INTO gps_positions (customer_id, vehicle_id, time, lat, lng) VALUES ($1, $2, now(), 1, 1)", a, vid
        )
        await conn.execute("INSERT INTO doc_updates (customer_id, doc, update) VALUES ($1, 'fleet', '\\x00')", a)
        # fleet events, trips, stops, the analysis state and thresholds (migration 0110)
        await conn.execute("INSERT INTO tracking_settings (customer_id, settings) VALUES ($1, '{}')", a)
        await conn.execute(
            "INSERT INTO fleet_events (customer_id, vehicle_id, type, time) VALUES ($1, $2, 'trip.started', now())",
            a,
            vid,
        )
        await conn.execute(
            "INSERT INTO trips (customer_id, vehicle_id, start_time, start_lat, start_lng, end_lat, end_lng, "
            "distance_m, duration_s, max_speed, avg_speed, path) VALUES ($1, $2, now(), 1, 1, 1, 1, 0, 0, 0, 0, '[]')",
            a,
            vid,
        )
        await conn.execute(
            "INSERT INTO stops (customer_id, vehicle_id, start_time, lat, lng, duration_s, confirmed_ms, state) "
            "VALUES ($1, $2, now(), 1, 1, 0, 0, '{}')",
            a,
            vid,
        )
        await conn.execute(
            "INSERT INTO motion_state (customer_id, vehicle_id, last_ms, state) VALUES ($1, $2, 0, '{}')", a, vid
        )
        user = await conn.fetchval(
            "INSERT INTO customer_users (customer_id, email, role) VALUES ($1, 'ann@a.example', 'admin') RETURNING id",
            a,
        )
        await conn.execute(  # a dispatcher app session (migration 0130)
            "INSERT INTO customer_user_sessions (customer_id, user_id, token_hash, expires_at) "
            "VALUES ($1, $2, $3, now() + interval '1 hour')",
            a,
            user,
            uuid.uuid4().bytes * 2,
        )
        await conn.execute(
            "INSERT INTO api_keys (customer_id, prefix, key_hash, permissions) VALUES ($1, 'whk_live_cd', $2, '{admin}')",
            a,
            uuid.uuid4().bytes,
        )
        hook = await conn.fetchval(
            "INSERT INTO webhook_endpoints (customer_id, url, events, secret) "
            "VALUES ($1, 'https://a.example/h', '{*}', $2) RETURNING id",
            a,
            sealing.seal("whsec_x", f"webhook_endpoints.secret/{a}"),  # sealed at rest (migration 0121)
        )
        delivery = await conn.fetchval(
            "INSERT INTO webhook_outbox (customer_id, endpoint_id, message_id, event_type, body, occurred_at) "
            "VALUES ($1, $2, gen_random_uuid(), 'trip.started', '{}', now()) RETURNING id",
            a,
            hook,
        )
        await conn.execute(
            "INSERT INTO webhook_attempts (customer_id, delivery_id, attempt, duration_ms) VALUES ($1, $2, 1, 5)",
            a,
            delivery,
        )
        # Stripe billing (migration 0140): the account and a webhook event of A's
        await conn.execute("INSERT INTO billing_accounts (customer_id, stripe_customer_id) VALUES ($1, 'cus_a')", a)
        await conn.execute(
            "INSERT INTO stripe_events (id, type, created, customer_id, outcome) "
            "VALUES ('evt_a', 'invoice.paid', 1, $1, 'applied')",
            a,
        )
    async with db.operator("test_setup") as conn:
        tables = [
            r["t"]
            for r in await conn.fetch(
                "SELECT c.oid::regclass::text AS t FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid "
                "WHERE p.polname = 'tenant_isolation' ORDER BY 1"
            )
        ]
        seen_by_operator = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in tables}
    assert seen_by_operator["vehicles"] == 1 and seen_by_operator["customers"] == 2 and len(tables) > 15
    assert all(seen_by_operator[t] == 1 for t in ("webhook_endpoints", "webhook_outbox", "webhook_attempts"))
    for t in ("tracking_settings", "fleet_events", "trips", "stops", "motion_state"):
        assert seen_by_operator[t] == 1, t
    assert seen_by_operator["customer_user_sessions"] == 1
    assert seen_by_operator["billing_accounts"] == 1 and seen_by_operator["stripe_events"] == 1
    for widen in (
        "SELECT set_config('app.operator', 'on', true)",
        f"SELECT set_config('app.customer_id', '{a}', true)",
        f"SELECT set_config('app.scope', 'tenant|{a}|9999999999|{'0' * 64}', true)",
        "SELECT set_config('app.scope', 'operator|*|9999999999|' || repeat('0', 64), true)",
    ):
        async with db.tenant(b) as conn:
            await conn.execute(widen)
            for t in tables:
                owner = "id" if t == "customers" else "customer_id"
                assert await conn.fetchval(f"SELECT count(*) FROM {t} WHERE {owner} = $1", a) == 0, (widen, t)


# --- one-round-trip reads (Database.tenant_read: the statement sets its own scope) ---------------

_POLICY_ONLY = (  # no TENANT_ROWS: only the tenant_isolation policy decides which rows it sees
    f"SELECT r.* FROM {SCOPED_FROM} (SELECT customer_id, vehicle_identifier FROM vehicles "
    f"WHERE {SCOPE_SET} ORDER BY vehicle_identifier LIMIT 1000) AS r ORDER BY r.vehicle_identifier"
)


async def _vehicles(db, customer_id, count):
    async with db.tenant(customer_id) as conn:
        await conn.executemany(
            "INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, 'v', $2)",
            [(customer_id, f"{customer_id}-{i}") for i in range(count)],
        )


@pytest.fixture
async def one_connection(database_url):
    """A pool of exactly one connection: every read below runs on the same server session."""
    database = await Database(database_url, AppRole.from_secret(TEST_SECRET), min_size=1, max_size=1).open()
    yield database
    await database.close()


async def _no_scope_left(db):
    async with db.connection() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT coalesce(current_setting('app.scope', true), '')") == ""
        assert await conn.fetchval("SELECT webhost_current_customer()") is None
        assert await conn.fetchval("SELECT count(*) FROM vehicles") == 0  # outside any transaction
        assert await conn.fetchval("SELECT count(*) FROM customers") == 0


@pytest.mark.parametrize("plans", ["auto", "force_generic_plan", "force_custom_plan"])
async def test_a_self_scoping_read_sees_only_its_tenant_and_leaves_no_scope(one_connection, plans):
    """tenant_read sets the scope inside its one statement: it sees exactly the customer's rows,
    never another tenant's (with or without the TENANT_ROWS index condition, generic or custom
    plans, the same connection switching tenants), and the connection holds no scope afterwards."""
    db = one_connection
    a, b, c = await _customer(db, "alpha"), await _customer(db, "bravo"), await _customer(db, "charlie")
    await _vehicles(db, a, 30)
    await _vehicles(db, b, 25)
    async with db.operator("test_setup") as conn:
        await conn.execute("ANALYZE vehicles")
    async with db.connection() as conn:  # a session setting: stays on the one pooled connection
        await conn.execute(f"SET plan_cache_mode = {plans}")
    for _ in range(8):  # past the five custom plans after which a prepared statement may go generic
        for customer, expected in ((a, 30), (b, 25), (c, 0)):
            rows = await vehicle_store.list_page(db, customer, vehicle_type=None, after=(None, None), limit=100)
            assert len(rows) == expected and {r["customer_id"] for r in rows} <= {customer}
            rows = await db.tenant_read(customer, _POLICY_ONLY)
            assert len(rows) == expected and {r["customer_id"] for r in rows} <= {customer}
            await _no_scope_left(db)
    page = await vehicle_store.list_page(db, a, vehicle_type=None, after=(None, None), limit=20)
    assert len(page) == 21  # one more than the page: there is a next one
    rest = await vehicle_store.list_page(
        db, a, vehicle_type=None, after=(page[19]["created_at"], page[19]["id"]), limit=20
    )
    assert [r["id"] for r in page[:20] + rest] == [
        r["id"] for r in await vehicle_store.list_page(db, a, vehicle_type=None, after=(None, None), limit=100)
    ]


async def test_a_self_scoping_read_runs_the_scope_before_the_rows(one_connection):
    """The plan's shape that makes the order (storage.database.SCOPED_FROM): a nested loop whose
    outer side is the one row setting the scope, the rows read on its inner side."""
    db = one_connection
    a = await _customer(db, "alpha")
    await _vehicles(db, a, 5)
    scope = db.role.tenant_scope(a)
    async with db.connection() as conn:
        for plans in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {plans}")
            statement = await conn.prepare(f"EXPLAIN (FORMAT JSON) {_POLICY_ONLY}")
            plan = (await statement.fetchval(scope))[0]["Plan"]  # json decoded by the pool's codec
            while plan["Node Type"] != "Nested Loop":
                (plan,) = plan["Plans"]
            outer, inner = plan["Plans"]
            assert outer["Parent Relationship"] == "Outer" and outer["Node Type"] in ("Result", "Subquery Scan")
            assert "vehicles" not in json.dumps(outer) and "vehicles" in json.dumps(inner)
        await conn.execute("RESET plan_cache_mode")


async def test_a_self_scoping_read_with_a_forged_or_no_scope_sees_nothing(one_connection):
    db = one_connection
    a, b = await _customer(db, "alpha"), await _customer(db, "bravo")
    await _vehicles(db, a, 3)
    forged = db.role.tenant_scope(b).replace(str(b), str(a))  # b's signature, a's id
    body = f"tenant|{a}|{int(time.time()) - 10}"  # signed, but its not-after has passed
    expired = body + "|" + hmac.new(db.role.scope_key, body.encode(), hashlib.sha256).hexdigest()
    async with db.connection() as conn:
        for scope in (forged, expired, "", f"tenant|{a}", f"operator|*|{int(time.time()) + 100}|00"):
            try:
                rows = await conn.fetch(_POLICY_ONLY, scope)
            except asyncpg.PostgresError:  # a malformed scope fails its decode: shows nothing either
                rows = []
            assert rows == []
            assert not conn.is_in_transaction()
    await _no_scope_left(db)


async def test_a_self_scoping_read_that_fails_leaves_no_scope(one_connection):
    db = one_connection
    a = await _customer(db, "alpha")
    await _vehicles(db, a, 3)
    failing = (
        f"SELECT r.* FROM {SCOPED_FROM} (SELECT 1 / (count(*) - 3) AS x FROM vehicles WHERE {SCOPE_SET} LIMIT 1) AS r"
    )
    with pytest.raises(asyncpg.DivisionByZeroError):  # it failed after reading a's rows
        await db.tenant_read(a, failing)
    await _no_scope_left(db)
    with pytest.raises(ValueError):  # only statements that scope themselves
        await db.tenant_read(a, "SELECT count(*) FROM vehicles")
    with pytest.raises(ValueError):
        await db.tenant_read("not-a-uuid", _POLICY_ONLY)


async def test_a_create_in_one_statement_is_scoped_to_its_customer_and_leaves_no_scope(db):
    """Database.tenant_one + webhost_quota_count (migration 0160): the count and the INSERT see and
    write only the scope's customer; the lock is gone with the statement; a statement that does not
    scope itself is refused; the count refuses to run without a tenant scope."""
    a, b = await _customer(db, "alpha"), await _customer(db, "bravo")
    row = await _vehicle_in_one_statement(db, a, "a1")
    assert row["customer_id"] == a
    assert await _vehicle_in_one_statement(db, b, "b1") is not None
    async with db.tenant(b) as conn:
        assert await conn.fetchval("SELECT webhost_quota_count('vehicles')") == 1  # b's alone, not a's
        assert [r["name"] for r in await conn.fetch("SELECT name FROM vehicles")] == ["b1"]
    await _no_scope_left(db)
    async with db.connection() as conn:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
            )
            == 0
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # no scope: no count, no lock
            await conn.fetchval("SELECT webhost_quota_count('vehicles')")
    with pytest.raises(ValueError):  # only statements that scope themselves
        await db.tenant_one(a, "INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, 'x', 'x')")
    forged = db.role.tenant_scope(b).replace(str(b), str(a))  # b's signature, a's id
    async with db.connection() as conn:  # the policy hides a's rows from it and refuses its INSERT
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchrow(vehicle_store._INSERT, forged, a, "f", "f", "car", {}, b"\0" * 32, 100, "hobby")
    async with db.tenant(a) as conn:
        assert await conn.fetchval("SELECT count(*) FROM vehicles") == 1


async def _vehicle_in_one_statement(db, customer_id, name):
    return await vehicle_store.insert(
        db,
        customer_id,
        name=name,
        vehicle_identifier=name,
        vehicle_type="car",
        metadata={},
        device_secret_hash=b"\0" * 32,
        limit=LimitOf(100, "hobby"),
    )
