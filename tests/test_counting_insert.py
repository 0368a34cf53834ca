"""The vehicle INSERT that reads its plan's limit and counts in its own statement (storage.vehicles.insert)."""

from storage import vehicles as vehicle_store
from storage.plans import LimitOf


async def _customer(db, slug):
    async with db.operator("test_setup") as conn:
        return await conn.fetchval("INSERT INTO customers (slug, name) VALUES ($1, $1) RETURNING id", slug)


async def _insert(db, customer_id, i, limit):
    async with db.tenant(customer_id, lock=f"quota:{customer_id}:vehicles") as conn:
        return await vehicle_store.insert(
            conn,
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
