"""Cross-node relay: latency (p50/p99) and throughput of a document update going from a client on
node A to a client on node B through Redis, against the same on one node.

    .venv/bin/python bench/cross_node.py [--updates 2000] [--pings 500] [--redis redis://127.0.0.1:6379/0]

Starts two real `webhost-sync serve` processes on free ports sharing a new PostgreSQL database and
Redis (a random REDIS_PREFIX; nothing else in Redis is touched), and two raw y-websocket peers in this
process (one clock for send and receive):
  latency     one small update at a time (a map key set), sender -> receiver, `--pings` times
  throughput  `--updates` updates sent back to back; updates/s until the receiver has them all
Prints a table and a JSON line. Numbers only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pycrdt  # noqa: E402
import websockets  # noqa: E402

from storage import migrator  # noqa: E402
from sync_server.sync import protocol  # noqa: E402
from tests.support import databases, sync_peers  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdef0123456789"


def make_updates(count: int) -> list[bytes]:
    doc = pycrdt.Doc()
    m = doc.get("m", type=pycrdt.Map)
    out = []
    for i in range(count):
        state = doc.get_state()
        m[f"k{i}"] = i
        out.append(doc.get_update(state))
    return out


class Peer:
    def __init__(self, ws) -> None:
        self.ws = ws
        self.received = 0
        self.arrived: dict[int, float] = {}
        self.changed = asyncio.Event()
        self._reader: asyncio.Task | None = None

    @classmethod
    async def join(cls, url: str) -> Peer:
        ws = await websockets.connect(url, max_size=None)
        peer = cls(ws)
        await ws.send(protocol.step1_frame(pycrdt.Doc().get_state()))
        while True:  # until our step 2 arrived (the server's step 1 is answered with nothing)
            frame = await ws.recv()
            if frame[:2] == bytes((protocol.SYNC, protocol.STEP1)):
                await ws.send(protocol.step2_frame(protocol.EMPTY_UPDATE))
            elif frame[:2] == bytes((protocol.SYNC, protocol.STEP2)):
                break
        peer._reader = asyncio.ensure_future(peer._read())
        return peer

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame[:2] == bytes((protocol.SYNC, protocol.UPDATE)):
                self.received += 1
                self.arrived[self.received] = time.perf_counter()
                self.changed.set()

    async def wait_for(self, count: int, timeout: float = 60.0) -> float:
        deadline = time.perf_counter() + timeout
        while self.received < count:
            self.changed.clear()
            if self.received >= count:
                break
            await asyncio.wait_for(self.changed.wait(), max(0.001, deadline - time.perf_counter()))
        return self.arrived[count]

    async def close(self) -> None:
        await self.ws.close()
        if self._reader:
            self._reader.cancel()


async def measure(sender_url: str, receiver_url: str, pings: int, updates: int) -> dict:
    receiver = await Peer.join(receiver_url)
    sender = await Peer.join(sender_url)
    frames = [protocol.update_frame(u) for u in make_updates(pings + updates)]
    await asyncio.sleep(0.5)  # both rooms loaded and reading
    lat = []
    for i in range(pings):
        sent = time.perf_counter()
        await sender.ws.send(frames[i])
        arrived = await receiver.wait_for(i + 1)
        lat.append((arrived - sent) * 1000)
    started = time.perf_counter()
    for frame in frames[pings:]:
        await sender.ws.send(frame)
    done = await receiver.wait_for(pings + updates, timeout=300)
    elapsed = done - started
    await sender.close()
    await receiver.close()
    lat.sort()
    return {
        "p50_ms": round(statistics.median(lat), 2),
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2),
        "max_ms": round(lat[-1], 2),
        "updates_per_s": round(updates / elapsed),
        "updates": updates,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=2000)
    ap.add_argument("--pings", type=int, default=500)
    ap.add_argument("--redis", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args()

    admin = await asyncio.to_thread(databases.admin_url)
    url = await databases.create_database(admin, prefix="wh_bench_xnode")
    tmp = Path(tempfile.mkdtemp(prefix="wh-xnode-"))
    nodes: list[ServerProcess] = []
    try:
        await migrator.migrate(url)
        customer = await sync_peers.create_customer(url, slug="bench")
        env = {
            "DATABASE_URL": url,
            "SECRET_KEY": SECRET,
            "DATA_DIR": str(tmp / "data"),
            "LOG_LEVEL": "warning",
            "REDIS_URL": args.redis,
            "REDIS_PREFIX": f"bench-{secrets.token_hex(4)}:",
            "CONNECTION_LIMITS": "off",
            "MIGRATE_ON_START": "false",
        }
        for n in range(2):
            nodes.append(ServerProcess({**env, "NODE_ID": f"bench-{n}"}, log_path=tmp / f"node-{n}.log").start())
        tok = sync_peers.token(SECRET, customer)

        def doc_url(node, doc):
            return f"{node.ws_url}/sync/{customer.slug}/{doc}?token={tok}"

        single = await measure(doc_url(nodes[0], "single"), doc_url(nodes[0], "single"), args.pings, args.updates)
        cross = await measure(doc_url(nodes[0], "cross"), doc_url(nodes[1], "cross"), args.pings, args.updates)
    finally:
        for node in nodes:
            node.stop()
        await databases.drop_database(admin, url)
    print(f"{'':12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'updates/s':>10}")
    for name, r in (("single node", single), ("cross node", cross)):
        print(f"{name:12} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8} {r['updates_per_s']:>10}")
    print(json.dumps({"single_node": single, "cross_node": cross}))


if __name__ == "__main__":
    asyncio.run(main())
