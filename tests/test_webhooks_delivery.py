"""Webhook delivery to a real local HTTP receiver (tests/support/webhook_receiver.py), verified with
the standardwebhooks library: failures of every kind and recovery lose nothing, order per
(endpoint, ordering key) holds, two workers never deliver one message both, private addresses are
refused at delivery, answers are bounded, dead letters and disabled endpoints are visible."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from contextlib import asynccontextmanager

import asyncpg

from storage import AppRole, Database, DatabaseRegistry
from storage import webhooks as store
from sync_server.domain.webhooks.delivery import DeliveryWorker, Policy
from sync_server.domain.webhooks.endpoints import generate_secret
from sync_server.domain.webhooks.outbox import Message, publish

from .conftest import TEST_SECRET
from .support import databases
from .support.webhook_receiver import Receiver

FAST = Policy(
    allow_private=True,
    concurrency=8,
    poll_seconds=0.05,
    connect_timeout=0.5,
    timeout=1.0,
    max_response_bytes=4096,
    retry_base=0.05,
    retry_max_delay=0.2,
    retry_window=3600,
    disable_after=3600,
    disable_after_failures=1000,
)
T0 = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)


async def _customer(db, slug="alpha"):
    async with db.operator("test_setup") as conn:
        return await conn.fetchval("INSERT INTO customers (slug, name) VALUES ($1, $1) RETURNING id", slug)


async def _endpoint(db, cid, url, events=("*",)):
    secret = generate_secret()
    async with db.tenant(cid) as conn:
        row = await store.insert_endpoint(conn, cid, url=url, events=list(events), description="", secret=secret)
    return row["id"], secret


async def _publish(db, cid, vehicles=3, per_vehicle=10, prefix="e"):
    msgs = [
        Message(
            "trip.started",
            {"vehicle_id": f"v{v}", "n": n},
            T0 + dt.timedelta(seconds=n),
            ordering_key=f"v{v}",
            dedupe_key=f"{prefix}:{v}:{n}",
        )
        for n in range(per_vehicle)
        for v in range(vehicles)
    ]
    async with db.tenant(cid) as conn:
        return await publish(conn, cid, msgs)


@asynccontextmanager
async def _worker(db, policy=FAST):
    worker = DeliveryWorker(DatabaseRegistry(db), policy)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stopping.set()
        worker.wake()
        await asyncio.wait_for(task, 10)
        await worker.sender.close()


async def _until(check, timeout=30.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"not reached in {timeout}s")


async def _status_counts(db, cid) -> dict[str, int]:
    async with db.tenant(cid) as conn:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM webhook_outbox GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


def _in_order_per_vehicle(received, secret) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for r in received:
        payload = r.verified(secret)
        seen.setdefault(payload["data"]["vehicle_id"], []).append(payload["data"]["n"])
    return seen


async def test_deliveries_are_signed_ordered_and_complete(db):
    receiver = await Receiver().start()
    try:
        cid = await _customer(db)
        _, secret = await _endpoint(db, cid, receiver.url)
        assert await _publish(db, cid) == 30
        async with _worker(db):
            await _until(lambda: _done(db, cid, 30))
        assert len(receiver.received) == 30
        first = receiver.received[0]
        assert first.headers["content-type"] == "application/json"
        assert first.webhook_id.startswith("msg_")
        body = json.loads(first.body)
        assert set(body) == {"type", "timestamp", "data"} and body["type"] == "trip.started"
        seen = _in_order_per_vehicle(receiver.received, secret)
        assert seen == {f"v{v}": list(range(10)) for v in range(3)}
        # a wrong secret does not verify
        try:
            first.verified(generate_secret())
        except Exception as exc:
            assert "signature" in str(exc).lower()
        else:
            raise AssertionError("a foreign secret verified")
    finally:
        await receiver.close()


async def _done(db, cid, n):
    return (await _status_counts(db, cid)).get("delivered", 0) == n


async def test_500_timeouts_refusals_then_recovery_lose_nothing(db):
    receiver = await Receiver(mode="error").start()
    port = receiver.port
    try:
        cid = await _customer(db)
        wid, secret = await _endpoint(db, cid, receiver.url)
        await _publish(db, cid, vehicles=2, per_vehicle=5)
        async with _worker(db):
            await _until(lambda: _attempted(db, cid, 4, status=500))
            receiver.mode = "hang"
            await _until(lambda: _attempted(db, cid, 2, error="timed out"))
            await receiver.close()  # connections refused
            await _until(lambda: _attempted(db, cid, 2, error="connection failed"))
            assert (await _status_counts(db, cid)) == {"pending": 10}
            receiver.mode = "ok"
            receiver.port = port
            await receiver.start()
            await _until(lambda: _done(db, cid, 10))
        ok = _in_order_per_vehicle(receiver.answered, secret)
        assert ok == {"v0": list(range(5)), "v1": list(range(5))}  # every event, in order, each answered once
        async with db.tenant(cid) as conn:
            worst = await conn.fetchval("SELECT max(attempts) FROM webhook_outbox")
            heads = await store.attempts_of(conn, [r["id"] for r in await conn.fetch("SELECT id FROM webhook_outbox")])
        assert worst >= 4  # the heads of both queues saw 500s, timeouts and refusals
        kinds = {a["status_code"] or a["error"].split(" ")[0] for a in heads}
        assert {500, "timed", "connection"} <= kinds, kinds
        endpoint = await _endpoint_row(db, cid, wid)
        assert endpoint["enabled"] and endpoint["failures"] == 0  # a success resets the run of failures
    finally:
        await receiver.close()


async def _attempted(db, cid, n, *, status=None, error=None):
    async with db.tenant(cid) as conn:
        return (
            await conn.fetchval(
                "SELECT count(*) FROM webhook_attempts WHERE ($1::int IS NULL OR status_code = $1) "
                "AND ($2::text IS NULL OR error LIKE $2 || '%')",
                status,
                error,
            )
            >= n
        )


async def _endpoint_row(db, cid, wid):
    async with db.tenant(cid) as conn:
        return await store.get_endpoint(conn, wid)


async def test_two_workers_never_both_deliver_a_message(database_url, db):
    receiver = await Receiver().start()
    other = await Database(database_url, AppRole.from_secret(TEST_SECRET), min_size=1, max_size=5, name="node-b").open()
    try:
        cid = await _customer(db)
        _, secret = await _endpoint(db, cid, receiver.url)
        total = await _publish(db, cid, vehicles=40, per_vehicle=5)
        async with _worker(db) as a, _worker(other) as b:
            await _until(lambda: _done(db, cid, total), timeout=60)
        ids = [r.webhook_id for r in receiver.received]
        assert len(ids) == total == len(set(ids))  # no message twice
        assert a.delivered > 0 and b.delivered > 0 and a.delivered + b.delivered == total  # both worked
        assert _in_order_per_vehicle(receiver.received, secret) == {f"v{v}": list(range(5)) for v in range(40)}
    finally:
        await other.close()
        await receiver.close()


async def test_private_addresses_are_refused_at_delivery(db):
    receiver = await Receiver().start()
    try:
        cid = await _customer(db)
        await _endpoint(db, cid, receiver.url)  # created while allowed (or its DNS answer changed since)
        await _publish(db, cid, vehicles=1, per_vehicle=1)
        strict = Policy(**{**FAST.__dict__, "allow_private": False})
        async with _worker(db, strict):
            await _until(lambda: _attempted(db, cid, 2, error="refused"))
        assert receiver.received == []
        async with db.tenant(cid) as conn:
            error = await conn.fetchval("SELECT last_error FROM webhook_outbox")
        assert "non-public address (127.0.0.1)" in error
    finally:
        await receiver.close()


async def test_answers_are_bounded_in_size_and_time(db):
    receiver = await Receiver(mode="big").start()
    try:
        cid = await _customer(db)
        await _endpoint(db, cid, receiver.url)
        await _publish(db, cid, vehicles=1, per_vehicle=1)
        async with _worker(db):
            await _until(lambda: _done(db, cid, 1))  # 8 MB answer: read up to the cap, delivered
            async with db.tenant(cid) as conn:
                attempt = (await store.attempts_of(conn, [await conn.fetchval("SELECT id FROM webhook_outbox")]))[0]
            assert attempt["status_code"] == 200 and len(attempt["response"]) <= 1000
            receiver.mode = "drip"  # 1000 bytes at 5 per second: cut at the 1 s deadline
            await _publish(db, cid, vehicles=1, per_vehicle=1, prefix="drip")
            started = time.monotonic()
            await _until(lambda: _attempted(db, cid, 1, error="timed out"))
            assert time.monotonic() - started < 5
    finally:
        await receiver.close()


async def test_dead_letters_and_disabled_endpoints_are_visible_and_recoverable(db):
    receiver = await Receiver(mode="error").start()
    try:
        cid = await _customer(db)
        wid, secret = await _endpoint(db, cid, receiver.url)
        await _publish(db, cid, vehicles=1, per_vehicle=1, prefix="old")
        short_window = Policy(**{**FAST.__dict__, "retry_window": 0.3})
        async with _worker(db, short_window):
            await _until(lambda: _dead(db, cid, 1))  # still failing past the retry window: dead-lettered
        assert (await _endpoint_row(db, cid, wid))["enabled"]  # dead letters alone do not disable
        await _publish(db, cid, vehicles=1, per_vehicle=2, prefix="new")
        quick_to_disable = Policy(**{**FAST.__dict__, "disable_after": 0.2, "disable_after_failures": 3})
        async with _worker(db, quick_to_disable):
            await _until(lambda: _endpoint_disabled(db, cid, wid))
        endpoint = await _endpoint_row(db, cid, wid)
        assert "every delivery failed, last: HTTP 500" in endpoint["disabled_reason"]
        assert "failed attempts" in endpoint["disabled_reason"] and endpoint["failures"] >= 3
        assert (await _status_counts(db, cid)) == {"dead": 1, "pending": 2}  # pending wait for the endpoint
        # the owner fixes the receiver, re-enables, and redelivers the dead letter
        receiver.mode = "ok"
        async with db.tenant(cid) as conn:
            await store.update_endpoint(conn, wid, url=receiver.url, events=["*"], description="", enabled=True)
            dead = await conn.fetchval("SELECT id FROM webhook_outbox WHERE status = 'dead'")
            assert await store.redeliver(conn, cid, wid, dead) is not None
        async with _worker(db):
            await _until(lambda: _no_pending(db, cid))
        assert sorted(r.verified(secret)["data"]["n"] for r in receiver.answered) == [0, 0, 1]
        assert (await _endpoint_row(db, cid, wid))["failures"] == 0
    finally:
        await receiver.close()


async def _dead(db, cid, n):
    return (await _status_counts(db, cid)).get("dead", 0) >= n


async def _endpoint_disabled(db, cid, wid):
    return not (await _endpoint_row(db, cid, wid))["enabled"]


async def _no_pending(db, cid):
    return "pending" not in await _status_counts(db, cid)


def test_retry_delays_grow_with_jitter_and_stay_bounded():
    p = Policy(retry_base=5, retry_max_delay=3600)
    for attempt, ceiling in ((1, 5), (2, 10), (5, 80), (20, 3600), (10**6, 3600)):
        delays = [p.retry_delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert len(set(delays)) > 100  # jittered
    assert p.retry_delay(1, retry_after=120) == 120  # Retry-After honoured...
    assert p.retry_delay(1, retry_after=10**6) == 3600  # ...within the bound


async def test_a_customer_sees_only_its_own_outbox(db):
    a = await _customer(db, "alpha")
    b = await _customer(db, "bravo")
    await _endpoint(db, a, "http://127.0.0.1:9/a")
    await _publish(db, a, vehicles=1, per_vehicle=2)
    async with db.tenant(b) as conn:
        assert await conn.fetchval("SELECT count(*) FROM webhook_outbox") == 0
        assert await conn.fetchval("SELECT count(*) FROM webhook_endpoints") == 0
        assert await store.claim(conn, a, limit=10, lease_seconds=5) == []  # A's id in B's scope claims nothing
        assert await store.secrets_of(conn, [uuid.uuid4()]) == {}
    async with db.platform() as conn:  # the due look-up names customers only
        assert await store.due_customers(conn, 10) == [a]


async def test_a_hanging_receiver_does_not_hold_the_other_customers_deliveries(db):
    slow = await Receiver(mode="hang").start()
    fine = await Receiver().start()
    try:
        a = await _customer(db, "alpha")
        b = await _customer(db, "bravo")
        await _endpoint(db, a, slow.url)
        _, secret = await _endpoint(db, b, fine.url)
        await _publish(db, a, vehicles=20, per_vehicle=2)  # 20 queues that each hang for the whole timeout
        await _publish(db, b, vehicles=2, per_vehicle=10)
        few_slots = Policy(**{**FAST.__dict__, "concurrency": 4, "timeout": 5.0})
        async with _worker(db, few_slots) as worker:
            await _until(lambda: _received(slow, 2))
            await _until(lambda: _done(db, b, 20), timeout=4)  # well inside one of A's timeouts
            assert worker.per_customer == 2
        assert _in_order_per_vehicle(fine.answered, secret) == {"v0": list(range(10)), "v1": list(range(10))}
    finally:
        await slow.close()
        await fine.close()


async def _received(receiver, n):
    return len(receiver.received) >= n


async def test_a_customer_on_a_dedicated_database_is_delivered_from_there(db, migrated_template, pg_admin_url):
    """The worker looks at every database of the registry: the shared one and each routed one."""
    dedicated_url = await migrated_template.clone()
    receiver = await Receiver().start()
    registry = DatabaseRegistry(db)
    worker = None
    try:
        cid = await _customer(db, "solo")
        owner = await asyncpg.connect(dedicated_url)
        try:
            await owner.execute("INSERT INTO customers (id, slug, name) VALUES ($1, 'solo', 'solo')", cid)
        finally:
            await owner.close()
        await registry.route(cid, dedicated_url)
        dedicated = await registry.for_customer(cid)
        _, secret = await _endpoint(dedicated, cid, receiver.url)
        total = await _publish(dedicated, cid, vehicles=2, per_vehicle=3)
        worker = DeliveryWorker(registry, FAST)
        task = asyncio.create_task(worker.run())
        await _until(lambda: _done(dedicated, cid, total))
        assert await _status_counts(db, cid) == {}  # nothing of it in the shared database
        assert _in_order_per_vehicle(receiver.answered, secret) == {"v0": [0, 1, 2], "v1": [0, 1, 2]}
    finally:
        if worker is not None:
            worker.stopping.set()
            worker.wake()
            await asyncio.wait_for(task, 10)
            await worker.sender.close()
        await registry.route(cid, None)
        await receiver.close()
        await databases.drop_database(pg_admin_url, dedicated_url)
