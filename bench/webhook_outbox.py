#!/usr/bin/env python3
"""Webhook outbox throughput: deliveries/s from the PostgreSQL outbox to a local receiver, against
the same signed POSTs sent straight from memory (no outbox) in the same run.

    .venv/bin/python bench/webhook_outbox.py [--messages 3000] [--concurrency 16] [--reps 3]

    enqueue     publish() of N messages in transactions of 100 (one endpoint matches)
    reference   N signed POSTs by the worker's Sender (URL check, signing, bounded read), no database,
                as many in flight as the worker gives one customer (half its slots)
    outbox      the DeliveryWorker drains N enqueued messages without ordering keys
    ordered     the same with 50 ordering keys (vehicles): one message per key in flight at a time

The receiver (tests/support/webhook_receiver.py, answering 204) runs in its own process; log lines
below warning are off. Needs
PostgreSQL as tests/support/databases finds it (a database is created and dropped). Results:
bench/RESULTS.md, "Webhook outbox throughput".
"""

import argparse
import asyncio
import datetime as dt
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from storage import AppRole, Database, DatabaseRegistry, migrator  # noqa: E402
from storage import webhooks as store  # noqa: E402
from sync_server.domain.webhooks.delivery import DeliveryWorker, Policy, Sender  # noqa: E402
from sync_server.domain.webhooks.endpoints import generate_secret  # noqa: E402
from sync_server.domain.webhooks.outbox import Message, message_id, publish  # noqa: E402
from tests.support import databases  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdef0123456789"
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def _messages(n: int, keys: int, tag: str) -> list[Message]:
    return [
        Message(
            "trip.started",
            {"vehicle_id": f"v{i % max(keys, 1)}", "n": i, "odometer_km": 12345.6},
            T0 + dt.timedelta(seconds=i),
            ordering_key=f"v{i % keys}" if keys else None,
            dedupe_key=f"{tag}:{i}",
        )
        for i in range(n)
    ]


async def _enqueue(db, cid, messages) -> float:
    started = time.perf_counter()
    for i in range(0, len(messages), 100):
        async with db.tenant(cid) as conn:
            await publish(conn, cid, messages[i : i + 100])
    return len(messages) / (time.perf_counter() - started)


async def _drain(db, cid, policy, n) -> float:
    worker = DeliveryWorker(DatabaseRegistry(db), policy)
    started = time.perf_counter()
    task = asyncio.create_task(worker.run())
    while worker.delivered < n:
        await asyncio.sleep(0.01)
        if task.done():
            raise RuntimeError(f"worker stopped: {task.exception()!r}")
    rate = n / (time.perf_counter() - started)
    worker.stopping.set()
    worker.wake()
    await task
    await worker.sender.close()
    async with db.tenant(cid) as conn:
        left = await conn.fetchval("SELECT count(*) FROM webhook_outbox WHERE status <> 'delivered'")
    assert left == 0, left
    return rate


async def _reference(url, secret, policy, n) -> float:
    sender = Sender(policy)
    slots = asyncio.Semaphore(max(1, policy.concurrency // 2))  # what one customer may hold of the worker
    body = '{"type":"trip.started","timestamp":"2026-12-01T00:00:00.000Z","data":{"vehicle_id":"v1","n":1}}'

    async def one(i):
        async with slots:
            result = await sender.send(url, secret, message_id(uuid.uuid4()), body)
            assert result.ok, result

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    rate = n / (time.perf_counter() - started)
    await sender.close()
    return rate


async def main(args) -> None:
    receiver = subprocess.Popen(
        [sys.executable, "-m", "tests.support.webhook_receiver"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    port = int(receiver.stdout.readline())
    url = f"http://127.0.0.1:{port}/hook"
    admin = args.admin
    dsn = await databases.create_database(admin, prefix="wh_bench")
    policy = Policy(allow_private=True, concurrency=args.concurrency, poll_seconds=0.05)
    rows = []
    try:
        await migrator.migrate(dsn)
        db = await Database(dsn, AppRole.from_secret(SECRET), min_size=2, max_size=8).open()
        async with db.operator("bench") as conn:
            cid = await conn.fetchval("INSERT INTO customers (slug, name) VALUES ('bench', 'bench') RETURNING id")
        secret = generate_secret()
        async with db.tenant(cid) as conn:
            await store.insert_endpoint(conn, cid, url=url, events=["*"], description="bench", secret=secret)
        for rep in range(args.reps):
            n = args.messages
            enqueue = await _enqueue(db, cid, _messages(n, 0, f"r{rep}"))
            outbox = await _drain(db, cid, policy, n)
            reference = await _reference(url, secret, policy, n)
            await _enqueue(db, cid, _messages(n, 50, f"o{rep}"))
            ordered = await _drain(db, cid, policy, n)
            rows.append((rep, enqueue, reference, outbox, ordered))
            print(
                f"rep {rep}: enqueue {enqueue:,.0f}/s reference {reference:,.0f}/s outbox {outbox:,.0f}/s ordered {ordered:,.0f}/s",
                flush=True,
            )
        await db.close()
    finally:
        await databases.drop_database(admin, dsn)
        receiver.stdin.close()
        receiver.wait(10)
    med = [statistics.median(r[i] for r in rows) for i in range(1, 5)]
    print()
    print(
        f"messages={args.messages} concurrency={args.concurrency} reps={args.reps} cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f}"
    )
    print("| metric | ours (median) | reference (median) | ratio |")
    print("|---|---|---|---|")
    print(f"| enqueue (messages/s, transactions of 100) | {med[0]:,.0f} | n/a | — |")
    print(f"| outbox deliveries/s, unordered | {med[2]:,.0f} | {med[1]:,.0f} | {med[2] / med[1]:.2f} |")
    print(f"| outbox deliveries/s, 50 ordering keys | {med[3]:,.0f} | {med[1]:,.0f} | {med[3] / med[1]:.2f} |")
    print()
    print("| rep | enqueue/s | reference POSTs/s | outbox/s | ordered/s |")
    print("|---|---|---|---|---|")
    for rep, *values in rows:
        print(f"| {rep} | " + " | ".join(f"{v:,.0f}" for v in values) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    arguments = parser.parse_args()
    # the worker's per-delivery info lines off (console rendering would be most of the CPU measured)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    arguments.admin = databases.admin_url()  # before the event loop starts (admin_url runs its own)
    asyncio.run(main(arguments))
