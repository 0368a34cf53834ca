"""The vehicle INSERT that takes the quota lock, counts after it, reads its plan's limit and inserts
in one statement (storage.vehicles.insert, webhost_quota_count of migration 0160)."""

import asyncio

from storage import usage as usage_store
from storage import vehicles as vehicle_store
from storage.plans import LimitOf


async def _customer(db, slug):
    async with db.operator("test_setup") as conn:
        return await conn.fetchval("INSERT INTO customers (slug, name) VALUES ($1, $1) RETURNING id", slug)


async def _insert(db, customer_id, i, limit):
    return await vehicle_store.insert(
        db,
        customer_id,
        name=f"v{i}",
        vehicle_identifier=f"v{i}",
        vehicle_type="car",
        metadata={},
        device_secret_hash=b"\0" * 32,
        limit=limit,
    )


async def test_the_insert_reads_the_plan_or_the_default_or_takes_the_known_limit(db):
    a = await _customer(db, "alpha")  # no subscription: the default plan (hobby, 5 vehicles)
    for i in range(5):
        assert await _insert(db, a, i, LimitOf(None, "hobby")) is not None
    assert await _insert(db, a, 5, LimitOf(None, "hobby")) is None
    assert await _insert(db, a, 5, LimitOf(6, "hobby")) is not None  # known (a dedicated database's plan)
    assert await _insert(db, a, 6, LimitOf(6, "hobby")) is None
    b = await _customer(db, "bravo")  # an active subscription's plan wins over the default
    async with db.operator("test_setup") as conn:
        await conn.execute(
            "INSERT INTO subscriptions (customer_id, plan_id, status) VALUES ($1, 'starter', 'active')", b
        )
        starter = await conn.fetchval("SELECT vehicle_limit FROM plans WHERE id = 'starter'")
    assert starter > 5
    for i in range(starter):
        assert await _insert(db, b, i, LimitOf(None, "hobby")) is not None
    assert await _insert(db, b, starter, LimitOf(None, "hobby")) is None
    async with db.tenant(a) as conn:  # a's rows are a's alone: b's limit did not count them
        assert await conn.fetchval("SELECT count(*) FROM vehicles") == 6


async def test_the_count_waits_for_the_quota_lock_and_sees_what_its_holder_committed(db):
    """A create waiting for the quota lock counts after it is granted, with a snapshot that holds
    the row the lock's holder inserted and committed meanwhile (a statement's own snapshot, taken
    before it waited, would not): at 4 of 5, the holder's 5th wins and the waiting create is refused."""
    a = await _customer(db, "alpha")
    for i in range(4):
        assert await _insert(db, a, i, LimitOf(5, "hobby")) is not None
    async with db.tenant(a) as conn:
        await usage_store.lock_quota(conn, a, "vehicles")  # the key every create path takes
        waiting = asyncio.create_task(_insert(db, a, 99, LimitOf(5, "hobby")))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # blocked on the lock, not counted yet
        await conn.execute("INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, 'v4', 'v4')", a)
    assert await asyncio.wait_for(waiting, 10) is None  # counted 5 after the commit: refused
    async with db.tenant(a) as conn:
        assert await conn.fetchval("SELECT count(*) FROM vehicles") == 5
