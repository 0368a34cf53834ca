import asyncio
import datetime as dt
import uuid

import asyncpg

from storage import migrator, partitions


async def _tables(url):
    conn = await asyncpg.connect(url)
    try:
        return {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    finally:
        await conn.close()


def test_migrations_apply_on_empty_database_then_are_a_no_op(fresh_database_url):
    first = asyncio.run(migrator.migrate(fresh_database_url))
    assert first == [m.version for m in migrator.available()]
    second = asyncio.run(migrator.migrate(fresh_database_url))
    assert second == []
    tables = asyncio.run(_tables(fresh_database_url))
    for table in (
        "customers",
        "platform_users",
        "customer_users",
        "api_keys",
        "tokens",
        "plans",
        "subscriptions",
        "vehicles",
        "drivers",
        "gps_positions",
        "usage_metrics",
        "geofences",
        "geofence_events",
        "routes",
        "deployments",
        "infrastructure_events",
        "doc_updates",
        "doc_snapshots",
        "schema_migrations",
    ):
        assert table in tables, table


def test_two_concurrent_migrate_runs_do_not_conflict(fresh_database_url):
    async def both():
        return await asyncio.gather(*(migrator.migrate(fresh_database_url) for _ in range(3)))

    results = asyncio.run(both())
    applied = sorted(v for r in results for v in r)
    assert applied == [m.version for m in migrator.available()]  # each applied exactly once


async def test_plans_are_seeded(db):
    async with db.platform() as conn:
        plans = {r["id"]: r for r in await conn.fetch("SELECT * FROM plans")}
    assert set(plans) == {"hobby", "starter", "professional", "business"}
    assert (plans["hobby"]["price_cents"], plans["hobby"]["vehicle_limit"], plans["hobby"]["retention_days"]) == (
        1500,
        5,
        30,
    )
    assert (plans["starter"]["price_cents"], plans["starter"]["vehicle_limit"], plans["starter"]["retention_days"]) == (
        4900,
        25,
        90,
    )
    assert plans["professional"]["vehicle_limit"] == 100 and plans["professional"]["retention_days"] == 365
    assert plans["business"]["vehicle_limit"] == 500 and plans["business"]["retention_days"] == 730
    limits = [plans[p]["gps_points_per_day"] for p in ("hobby", "starter", "professional", "business")]
    assert limits == sorted(limits) and len(set(limits)) == 4


async def test_email_uniqueness_is_case_insensitive(db):
    async with db.platform() as conn:
        await conn.execute("INSERT INTO platform_users (email, password_hash) VALUES ('Ops@Example.com', 'x')")
        try:
            await conn.execute("INSERT INTO platform_users (email, password_hash) VALUES ('ops@example.COM', 'x')")
        except asyncpg.UniqueViolationError:
            return
    raise AssertionError("a second operator with the same email in other case was accepted")


async def test_partitions_are_created_ahead_and_old_ones_dropped(db):
    today = dt.date(2026, 11, 22)
    created, _ = await partitions.maintain(db, days_ahead=10, today=today)
    names = await partitions.list_partitions(db, "gps_positions")
    assert "gps_positions_p20261202" in names and "gps_positions_p20261121" in names
    # A backfill from long ago gets its day on demand, and maintenance later drops it as expired.
    old = today - dt.timedelta(days=800)
    assert await partitions.ensure(db, old, old) == 2
    assert f"gps_positions_p{old:%Y%m%d}" in await partitions.list_partitions(db, "gps_positions")
    _, dropped = await partitions.maintain(db, days_ahead=10, today=today)
    assert dropped >= 2
    remaining = await partitions.list_partitions(db, "gps_positions")
    assert f"gps_positions_p{old:%Y%m%d}" not in remaining
    assert "gps_positions_p20261122" in remaining
    # Idempotent: running again creates nothing new for the same window.
    again, _ = await partitions.maintain(db, days_ahead=10, today=today)
    assert again == 0 and created > 0


async def test_documents_use_lz4_where_postgresql_has_it(db):
    async with db.platform() as conn:
        try:
            await conn.execute("SET LOCAL default_toast_compression = lz4")
            expected = "l"
        except asyncpg.FeatureNotSupportedError:  # e.g. the embedded pgserver build: pglz stays
            expected = ""
        kinds = await conn.fetch(
            "SELECT attrelid::regclass::text AS t, attcompression::text AS c FROM pg_attribute "
            "WHERE (attrelid, attname) IN (('doc_updates'::regclass, 'update'), ('doc_snapshots'::regclass, 'state'))"
        )
    assert {r["t"]: r["c"] for r in kinds} == {"doc_updates": expected, "doc_snapshots": expected}


async def test_every_tenant_policy_reads_the_settings_once_per_query(db):
    """All tenant_isolation policies, day partitions made after the migration included, have the
    InitPlan form; and a tenant count plans them as parameters, not per-row function calls."""
    day = dt.date(2031, 1, 15)
    await partitions.ensure(db, day, day)
    async with db.platform() as conn:
        policies = await conn.fetch(
            "SELECT tablename, qual, with_check FROM pg_policies WHERE policyname = 'tenant_isolation'"
        )
        tables = {r["tablename"] for r in policies}
        assert {"vehicles", "customers", "track_progress", "recommendations", f"gps_positions_p{day:%Y%m%d}"} <= tables
        for r in policies:
            for text in (r["qual"], r["with_check"]):
                assert "( SELECT webhost_current_customer()" in text and "( SELECT webhost_is_operator()" in text, r
    customer = uuid.uuid4()
    async with db.tenant(customer) as conn:
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN SELECT count(*) FROM vehicles"))
    assert "InitPlan" in plan and "current_setting" not in plan.split("Filter:")[-1], plan


def _schema_dump(url: str) -> list[str]:
    import shutil
    import subprocess

    out = subprocess.run(
        [shutil.which("pg_dump") or "pg_dump", "--schema-only", url], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]


async def _rows(url: str) -> dict[str, list]:
    """Every table's rows without its timestamp columns (applied_at, created_at differ by when)."""
    conn = await asyncpg.connect(url)
    try:
        found = {}
        for (table,) in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"):
            cols = [
                r[0]
                for r in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 "
                    "AND data_type NOT LIKE 'timestamp%' ORDER BY ordinal_position",
                    table,
                )
            ]
            sel = ", ".join(f'"{c}"::text' for c in cols)
            found[table] = sorted(tuple(r) for r in await conn.fetch(f'SELECT {sel} FROM "{table}"'))
        found["database"] = [
            tuple(
                await conn.fetchrow(
                    "SELECT datallowconn, datistemplate, datconnlimit, datacl::text, "
                    " (SELECT count(*) FROM pg_db_role_setting s WHERE s.setdatabase = d.oid) "
                    "FROM pg_database d WHERE datname = current_database()"
                )
            )
        ]
        return found
    finally:
        await conn.close()


def test_a_clone_of_the_template_is_a_freshly_migrated_database(fresh_database_url, database_url):
    """The tests' database_url clones a template migrated once per session: it must be exactly what
    migrating from scratch makes (schema, privileges, policies, seed rows, database settings)."""
    asyncio.run(migrator.migrate(fresh_database_url))
    assert _schema_dump(database_url) == _schema_dump(fresh_database_url)
    assert asyncio.run(_rows(database_url)) == asyncio.run(_rows(fresh_database_url))
