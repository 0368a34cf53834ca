"""The lane (storage.database._Lane): pool connections handed from one use to the next without
asyncpg's acquire and release, and never handed on in a state the next user must not see."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import asyncpg
import pytest

from storage import AppRole, Database
from storage.database import SCOPE_SET, SCOPED_FROM, _closed

from .conftest import TEST_SECRET

PID = "SELECT pg_backend_pid()"


@asynccontextmanager
async def opened(database_url: str, max_size: int):
    db = await Database(database_url, AppRole.from_secret(TEST_SECRET), min_size=1, max_size=max_size).open()
    try:
        yield db
    finally:
        await asyncio.wait_for(db.close(), 10)


async def _customer(db: Database, slug: str):
    async with db.operator("test_setup") as conn:
        return await conn.fetchval("INSERT INTO customers (slug, name) VALUES ($1, $1) RETURNING id", slug)


async def _app_sessions(database_url: str) -> list[asyncpg.Record]:
    """The serving pool's server sessions, as the owner sees them."""
    owner = await asyncpg.connect(database_url)
    try:
        return await owner.fetch(
            "SELECT pid, state, query FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'webhost-sync'"
        )
    finally:
        await owner.close()


async def _clean(db: Database) -> int:
    """The next use: it works, holds no transaction and no scope; its backend pid."""
    async with db.connection() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT current_setting('app.scope', true)") in (None, "")
        assert await conn.fetchval("SELECT txid_current_if_assigned()") is None
        return await conn.fetchval(PID)


async def test_a_returned_connection_is_handed_to_the_next_use(database_url):
    async with opened(database_url, max_size=4) as db:
        a = await _customer(db, "alpha")
        # asyncpg makes a new proxy for every acquire (and detaches the old one on release): the
        # same proxy object means the connection never went through the pool in between.
        async with db.connection() as held:
            first = await held.fetchval(PID)
        size, idle, most = db.pool_use() or (0, 0, 0)
        assert (idle, most) == (size, 4)  # the parked connection counts as idle
        assert db._pool is not None and db._pool.get_idle_size() == size - 1  # asyncpg sees it acquired
        async with db.tenant(a) as conn:
            assert conn is held and await conn.fetchval(PID) == first
        async with db.platform() as conn:
            assert conn is held
        await db.ping()
        assert await db.tenant_read(a, f"SELECT r.* FROM {SCOPED_FROM} (SELECT 1 AS one WHERE {SCOPE_SET} LIMIT 1) r")
        assert await _clean(db) == first
        assert db._lane is not None and db._lane.idle == [held]


async def test_a_waiter_on_an_exhausted_pool_gets_the_connection_when_it_is_returned(database_url):
    async with opened(database_url, max_size=1) as db:
        held, let_go = asyncio.Event(), asyncio.Event()

        async def holder() -> int:
            async with db.connection() as conn:
                held.set()
                await let_go.wait()
                return await conn.fetchval(PID)

        async def waiter() -> tuple[int, float]:
            async with db.connection() as conn:
                return await conn.fetchval(PID), time.monotonic()

        first = asyncio.create_task(holder())
        await held.wait()
        second = asyncio.create_task(waiter())
        await asyncio.sleep(0.05)
        assert not second.done() and db._lane is not None and db._lane.waiting == 1
        let_go.set()
        returned = time.monotonic()
        pid = await first
        got, at = await asyncio.wait_for(second, 2)  # parked instead: the waiter waits for ever
        assert got == pid and at - returned < 1
        assert db._lane.waiting == 0 and len(db._lane.idle) == 1  # nobody waits now: parked


async def test_a_failed_or_cancelled_statement_leaves_a_working_connection(database_url):
    async with opened(database_url, max_size=1) as db:
        a = await _customer(db, "alpha")
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with db.connection() as conn:
                await conn.fetchval("SELECT 1 / 0")
        await _clean(db)
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with db.tenant(a) as conn:
                await conn.fetchval("SELECT 1 / 0")
        await _clean(db)
        with pytest.raises(asyncpg.DivisionByZeroError):
            await db.tenant_one(
                a,
                "SELECT x.* FROM (SELECT set_config('app.scope', $1, true) AS scope OFFSET 0) AS scope_set "
                "CROSS JOIN LATERAL (SELECT 1 / 0 AS x WHERE scope_set.scope IS NOT NULL LIMIT 1) AS x",
            )
        await _clean(db)

        started = time.monotonic()
        for use in ("connection", "tenant"):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    async with db.connection() if use == "connection" else db.tenant(a) as conn:
                        await conn.execute("SELECT pg_sleep(30)")
            await _clean(db)
        assert time.monotonic() - started < 10  # the statements were cancelled, not waited for

        async with db.connection() as conn:  # a block that ends normally inside a transaction
            await conn.execute("BEGIN")
            await conn.execute("SELECT set_config('app.scope', 'left behind', true)")
        await _clean(db)
        assert all(s["state"] == "idle" for s in await _app_sessions(database_url))


async def test_a_block_that_raises_inside_tenant_leaves_no_transaction_and_no_scope(database_url):
    async with opened(database_url, max_size=1) as db:
        a = await _customer(db, "alpha")
        with pytest.raises(RuntimeError, match="the block failed"):
            async with db.tenant(a) as conn:
                pid = await conn.fetchval(PID)
                await conn.execute(
                    "INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, 'v', 'v1')", a
                )
                assert await conn.fetchval("SELECT current_setting('app.scope', true)")
                raise RuntimeError("the block failed")
        assert await _clean(db) == pid  # the same server session, handed on clean
        async with db.tenant(a) as conn:
            assert await conn.fetchval("SELECT count(*) FROM vehicles") == 0  # rolled back


async def test_a_parked_connection_the_server_ended_is_replaced(database_url):
    async with opened(database_url, max_size=4) as db:
        a = await _customer(db, "alpha")
        async with db.connection() as conn:
            pid = await conn.fetchval(PID)
        assert db._lane is not None and len(db._lane.idle) == 1
        parked = db._lane.idle[0]
        owner = await asyncpg.connect(database_url)
        try:
            assert await owner.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await owner.close()
        for _ in range(200):  # until the client side has seen the socket close
            if _closed(parked):
                break
            await asyncio.sleep(0.01)
        assert _closed(parked)
        async with db.tenant(a) as conn:
            assert await conn.fetchval(PID) != pid
        assert await _clean(db) != pid


async def test_close_with_a_use_in_flight_does_not_hang(database_url):
    async with opened(database_url, max_size=8) as db:  # a lane of two
        entered, both = asyncio.Event(), asyncio.Barrier(2)

        async def use(sleep: float, barrier: asyncio.Barrier | None = None) -> int:
            async with db.connection() as conn:
                entered.set()
                if barrier is not None:
                    await barrier.wait()  # both held at once, then both returned: both parked
                await conn.execute(f"SELECT pg_sleep({sleep})")
                return await conn.fetchval(PID)

        await asyncio.gather(use(0, both), use(0, both))
        assert db._lane is not None and len(db._lane.idle) == 2
        entered.clear()
        in_flight = asyncio.create_task(use(0.3))
        await entered.wait()
        assert len(db._lane.idle) == 1  # one parked, one in use while the pool closes
        await asyncio.wait_for(db.close(), 5)
        assert await in_flight
        assert db.pool_use() is None
        with pytest.raises(RuntimeError, match="not open"):
            async with db.connection():
                pass
