"""Webhook delivery by real `webhost-sync serve` processes: kill -9 of the node during delivery
loses nothing (its leased rows are delivered by the next node, same webhook-id)."""

from __future__ import annotations

import asyncio
import signal

import pytest

from storage import AppRole, Database

from .conftest import TEST_SECRET
from .support.server import ServerProcess
from .support.webhook_receiver import Receiver
from .test_webhooks_delivery import _customer, _endpoint, _publish, _status_counts, _until

pytestmark = pytest.mark.slow

NODE_ENV = {
    "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
    "WEBHOOK_TIMEOUT_SECONDS": "1",
    "WEBHOOK_POLL_SECONDS": "0.1",
    "WEBHOOK_RETRY_BASE_SECONDS": "0.1",
    "WEBHOOK_RETRY_MAX_DELAY_SECONDS": "0.5",
    "WEBHOOK_CONCURRENCY": "8",
}


async def test_kill_9_during_delivery_loses_nothing(server_env, database_url, tmp_path):
    db = await Database(database_url, AppRole.from_secret(TEST_SECRET), min_size=1, max_size=3).open()
    receiver = await Receiver(mode="hang").start()  # the node's POSTs hang: it dies mid-delivery
    env = {**server_env, **NODE_ENV}
    first = second = None
    try:
        cid = await _customer(db)
        _, secret = await _endpoint(db, cid, receiver.url)
        total = await _publish(db, cid, vehicles=6, per_vehicle=5)
        first = await asyncio.to_thread(ServerProcess(env, log_path=tmp_path / "node1.log").start)
        await _until(lambda: _received(receiver, 6), timeout=60)  # the head of each vehicle's queue in flight
        in_flight = {r.webhook_id for r in receiver.received}
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        assert (await _status_counts(db, cid)) == {"pending": total}  # nothing recorded as delivered

        receiver.mode = "ok"
        second = await asyncio.to_thread(ServerProcess(env, log_path=tmp_path / "node2.log").start)
        await _until(lambda: _all_delivered(db, cid, total), timeout=120)  # after the dead node's lease
        answered = {r.webhook_id for r in receiver.answered}
        assert len(answered) == total and in_flight <= answered  # the killed node's deliveries were made again
        per_vehicle: dict[str, list[int]] = {}
        for r in receiver.answered:
            payload = r.verified(secret)
            per_vehicle.setdefault(payload["data"]["vehicle_id"], []).append(payload["data"]["n"])
        assert per_vehicle == {f"v{v}": list(range(5)) for v in range(6)}  # and in order
    finally:
        for node in (first, second):
            if node is not None:
                await asyncio.to_thread(node.stop)
        await receiver.close()
        await db.close()


async def _received(receiver, n):
    return len(receiver.received) >= n


async def _all_delivered(db, cid, n):
    return (await _status_counts(db, cid)) == {"delivered": n}
