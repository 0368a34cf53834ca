"""Live tenant migration in-process against real PostgreSQL: shared -> dedicated -> shared with a
writer adding GPS rows the whole time; counts and checksums; retention on the way down; failures."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import pytest

from storage import deployments as store
from storage import tenant_data
from sync_server.domain import provisioning
from sync_server.domain.provisioning import tenant_migration

from .support import databases, tenants
from .support.runtime import provisioning_runtime


@pytest.fixture
async def rt(database_url, tmp_path, pg_admin_url):
    async with provisioning_runtime(database_url, tmp_path / "data", pg_admin_url) as runtime:
        yield runtime


async def wait_migration(rt, cid, mid, *statuses, timeout=120.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        mig = await store.get_migration(rt.db, cid, mid)
        if mig["status"] in statuses:
            return dict(mig)
        if mig["status"] == "failed":
            raise AssertionError(f"migration failed: {mig['error']}")
        assert asyncio.get_running_loop().time() < deadline, f"migration still {mig['status']}"
        await asyncio.sleep(0.05)


class GpsWriter:
    """Inserts one GPS row at a time through the registry (as the materializer does), counting
    every committed insert, so the test can prove none was lost or duplicated by a move."""

    def __init__(self, rt, cid, vehicle_id) -> None:
        self.rt, self.cid, self.vehicle_id = rt, cid, vehicle_id
        self.committed = 0
        self.stop = asyncio.Event()
        self.base = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)

    async def run(self) -> None:
        while not self.stop.is_set():
            db = await self.rt.registry.for_customer(self.cid)
            async with db.tenant(self.cid) as conn:
                await conn.execute(
                    "INSERT INTO gps_positions (customer_id, vehicle_id, time, lat, lng) VALUES ($1, $2, $3, 1, 2)",
                    self.cid,
                    self.vehicle_id,
                    self.base + dt.timedelta(milliseconds=self.committed),
                )
            self.committed += 1
            await asyncio.sleep(0.002)


async def _vehicle(url, cid):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT id FROM vehicles WHERE customer_id = $1 ORDER BY name LIMIT 1", cid)
    finally:
        await conn.close()


def test_every_table_with_customer_data_is_classified(database_url):
    async def check():
        conn = await asyncpg.connect(database_url)
        try:
            found = await tenant_data.tables_with_customer_id(conn)
        finally:
            await conn.close()
        moved = {t.name for t in tenant_data.TENANT_TABLES}
        assert found - moved - tenant_data.CONTROL_PLANE_TABLES == set(), (
            "classify new tables in storage/tenant_data.py (moved with the customer, or control plane)"
        )
        assert moved & tenant_data.CONTROL_PLANE_TABLES == {"customers"}

    asyncio.run(check())


async def test_shared_to_dedicated_to_shared_with_live_writes(rt, database_url, pg_admin_url):
    cid = await tenants.seed_customer(database_url, gps_rows=50_000, old_rows=120, plan="hobby")
    before = await tenants.snapshot(database_url, cid)
    assert before["gps_positions"]["rows"] == 50_120
    writer = GpsWriter(rt, cid, await _vehicle(database_url, cid))
    writing = asyncio.create_task(writer.run())

    # --- up: shared -> dedicated -----------------------------------------------------------
    mig = await tenant_migration.start(rt, cid, "single_tenant")
    assert mig["dropping"] == {}
    done = await wait_migration(rt, cid, mig["id"], "switched", "cleaned")
    dep = await store.current(rt.db, cid)
    assert dep["status"] == "active" and dep["mode"] == "single_tenant" and dep["database_url"]
    assert (await rt.registry.for_customer(cid)).dsn == dep["database_url"]
    print(f"\nshared -> dedicated: writes paused {done['pause_ms']:.0f} ms")
    await asyncio.sleep(0.3)  # writes continue on the dedicated database
    writer.stop.set()
    await writing
    dedicated_url = dep["database_url"]
    after_up = await tenants.snapshot(dedicated_url, cid)
    expected_gps = 50_120 + writer.committed
    assert after_up["gps_positions"]["rows"] == expected_gps
    for name in (
        "vehicles",
        "geofences",
        "drivers",
        "doc_updates",
        "doc_snapshots",
        "geofence_events",
        "vehicle_positions_latest",
        "usage_metrics",
        "customers",
    ):
        assert after_up[name] == before[name], name
    # the checksums recorded at the switch are the source's, and the target matched them
    assert done["tables"]["vehicles"] == before["vehicles"]
    # clean-up (grace 0) removed the shared copy of tenant rows but kept the control plane
    await wait_migration(rt, cid, mig["id"], "cleaned")
    shared_now = await tenants.snapshot(database_url, cid)
    assert shared_now["gps_positions"]["rows"] == 0 and shared_now["vehicles"]["rows"] == 0
    assert shared_now["customers"]["rows"] == 1  # the control-plane row stays (now single_tenant)
    events = await store.events(rt.db, cid)
    steps = {(e["step"], e["status"]) for e in events}
    assert {
        ("migration_copy", "progress"),
        ("migration_switch", "succeeded"),
        ("migration_cleanup", "succeeded"),
        ("create_database", "succeeded"),
    } <= steps
    # the target's sequences moved past the copied ids: a new document update gets a larger seq
    db = await rt.registry.for_customer(cid)
    async with db.tenant(cid) as conn:
        top = await conn.fetchval("SELECT max(seq) FROM doc_updates")
        new = await conn.fetchval(
            "INSERT INTO doc_updates (customer_id, doc, update) VALUES ($1, 'fleet', '\\x01') RETURNING seq", cid
        )
    assert new > top

    # --- down: dedicated -> shared on hobby (30 days): the 40-day-old rows stay behind ----------
    writer2 = GpsWriter(rt, cid, await _vehicle(dedicated_url, cid))
    writer2.base += dt.timedelta(hours=1)
    writing = asyncio.create_task(writer2.run())
    plan = await tenant_migration.plan_move(rt, cid, "multi_tenant")
    assert plan["dropping"] == {"gps_positions": 120, "usage_metrics": 1}
    mig2 = await tenant_migration.start(rt, cid, "multi_tenant")
    assert mig2["dropping"] == {"gps_positions": 120, "usage_metrics": 1}
    done2 = await wait_migration(rt, cid, mig2["id"], "switched", "cleaned")
    assert (await rt.registry.for_customer(cid)) is rt.registry.shared
    print(f"dedicated -> shared: writes paused {done2['pause_ms']:.0f} ms")
    await asyncio.sleep(0.3)
    writer2.stop.set()
    await writing
    final = await tenants.snapshot(database_url, cid)
    assert final["gps_positions"]["rows"] == expected_gps - 120 + writer2.committed
    assert final["usage_metrics"]["rows"] == before["usage_metrics"]["rows"] - 1
    assert final["doc_updates"]["rows"] == before["doc_updates"]["rows"] + 1
    for name in ("vehicles", "geofences", "drivers", "doc_snapshots", "geofence_events"):
        assert final[name] == before[name], name
    # the dedicated database is dropped after the grace period and its deployment decommissioned
    await wait_migration(rt, cid, mig2["id"], "cleaned")
    dep2 = await store.get(rt.db, dep["id"])
    assert dep2["status"] == "decommissioned" and dep2["database_url"] is None
    conn = await asyncpg.connect(pg_admin_url)
    try:
        assert not await conn.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", dep2["config"]["dropped_database"]
        )
    finally:
        await conn.close()
    async with rt.db.tenant(cid) as conn:
        assert await conn.fetchval("SELECT deployment_mode FROM customers WHERE id = $1", cid) == "multi_tenant"


async def test_existing_database_fails_the_deployment_and_the_customer_stays_served(rt, database_url, pg_admin_url):
    cid = await tenants.seed_customer(database_url, gps_rows=100)
    name = f"whd_taken_{uuid.uuid4().hex[:8]}"
    taken = await databases.create_database(pg_admin_url, prefix="unused")
    conn = await asyncpg.connect(pg_admin_url)
    try:
        await conn.execute(f'ALTER DATABASE "{taken.rsplit("/", 1)[1]}" RENAME TO "{name}"')
    finally:
        await conn.close()
    try:
        dep = await provisioning.deployments.create(
            rt, customer_id=cid, mode="single_tenant", infrastructure="local", config={"database_name": name}
        )
        for _ in range(200):
            row = await store.get(rt.db, dep["id"])
            if row["status"] != "provisioning":
                break
            await asyncio.sleep(0.05)
        assert row["status"] == "failed" and "already exists" in row["error"]
        failed = [e for e in await store.events(rt.db, cid, dep["id"]) if e["status"] == "failed"]
        assert failed and "already exists" in failed[0]["error"]
        # our rollback never drops a database it did not create
        conn = await asyncpg.connect(pg_admin_url)
        try:
            assert await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        finally:
            await conn.close()
        db = await rt.registry.for_customer(cid)
        assert db is rt.registry.shared
        async with db.tenant(cid) as c:
            assert await c.fetchval("SELECT count(*) FROM gps_positions") == 100
        # a failed deployment no longer blocks a new one
        assert (await store.current(rt.db, cid)) is None
    finally:
        await databases.drop_database(pg_admin_url, databases.with_database(pg_admin_url, name))


async def test_unreachable_target_fails_the_migration_and_the_customer_stays_served(database_url, tmp_path):
    from .support.server import free_port

    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    async with provisioning_runtime(database_url, tmp_path / "data", unreachable) as runtime:
        cid = await tenants.seed_customer(database_url, gps_rows=10)
        mig = await tenant_migration.start(runtime, cid, "single_tenant")
        for _ in range(400):
            row = await store.get_migration(runtime.db, cid, mig["id"])
            if row["status"] != "running":
                break
            await asyncio.sleep(0.05)
        assert row["status"] == "failed" and "unreachable" in row["error"]
        dep = await store.get(runtime.db, row["deployment_id"])
        assert dep["status"] == "failed" and "unreachable" in dep["error"]
        events = await store.events(runtime.db, cid)
        assert any(e["status"] == "failed" and e["error"] and "unreachable" in e["error"] for e in events)
        assert (await runtime.registry.for_customer(cid)) is runtime.registry.shared
        async with runtime.db.tenant(cid) as c:
            assert await c.fetchval("SELECT count(*) FROM gps_positions") == 10
