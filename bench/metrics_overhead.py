"""What the metrics extension adds to the relay path, per update (issue 18).

In one process, the sync core's relay path as a websocket update takes it: `Room.receive` of a real
y-websocket update frame (decode, the room's checks, yrs apply, broadcast to the room's peers,
the change hooks) with two real `Connection`s whose writers discard the bytes. Two rooms, the same
updates: one without the metrics hook, one with `SyncCounters` (what `install` adds to every
room). Repetitions alternate which goes first; reported: CPU (process_time) per update of each and
the ratio, in the same run. No database, no network: the metrics change adds nothing there (the
group commit's histogram is observed once per transaction, not per update).

    .venv/bin/python bench/metrics_overhead.py [--updates 20000] [--reps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import pycrdt

from sync_server.extensions.metrics import SyncCounters
from sync_server.sync import protocol
from sync_server.sync.connection import Connection
from sync_server.sync.hooks import HookList
from sync_server.sync.rooms import Room


def updates(n: int) -> list[bytes]:
    """n y-websocket update frames, one map entry each (what a phone's small edit sends)."""
    doc = pycrdt.Doc()
    m = doc.get("m", type=pycrdt.Map)
    out: list[bytes] = []
    doc.observe(lambda event: out.append(protocol.update_frame(event.update)))
    for i in range(n):
        m[f"k{i}"] = i
    return out


async def one_run(frames: list[bytes], with_metrics: bool) -> float:
    hooks = HookList()
    counters = SyncCounters()
    if with_metrics:
        hooks.add(counters, priority=1000)
    room = Room("c", "fleet", hooks)

    async def discard(_frame: bytes) -> None:
        return None

    peers = [
        Connection(discard, customer_id="c", doc="fleet", can_write=True, queue_limit=10**7, queue_bytes=2**34)
        for _ in range(2)
    ]
    for p in peers:
        p.start()
        room.join(p)
    started = time.process_time()
    for frame in frames:
        await room.receive(peers[0], frame)
        if len(peers[1]._queue) > 512:
            await asyncio.sleep(0)  # let the senders take their queues, as the event loop does
    spent = time.process_time() - started
    for p in peers:
        await p.stop()
    if with_metrics:
        assert counters.from_websocket == len(frames) and counters.relayed == 2 * len(frames)
    return spent / len(frames)


async def hook_cost(n: int, reps: int) -> tuple[float, float]:
    """CPU per call of the change hooks alone (what the room awaits per update): none vs SyncCounters."""
    update = updates(1)[0]
    results = {False: [], True: []}
    for rep in range(reps):
        for with_metrics in (False, True) if rep % 2 == 0 else (True, False):
            hooks = HookList()
            if with_metrics:
                hooks.add(SyncCounters(), priority=1000)
            room = Room("c", "fleet", hooks)

            async def discard(_frame: bytes) -> None:
                return None

            peer = Connection(discard, customer_id="c", doc="fleet", can_write=True, queue_limit=10)
            room.connections.add(peer)
            started = time.process_time()
            for _ in range(n):
                await hooks.change(room, update, peer)
            results[with_metrics].append((time.process_time() - started) / n)
    return statistics.median(results[False]), statistics.median(results[True])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    frames = updates(args.updates)
    plain, measured = [], []
    for rep in range(args.reps):
        order = (False, True) if rep % 2 == 0 else (True, False)
        for with_metrics in order:
            (measured if with_metrics else plain).append(await one_run(frames, with_metrics))
    p, m = statistics.median(plain), statistics.median(measured)
    print(f"updates per run: {args.updates}, reps: {args.reps} (alternating order)")
    print(
        f"relay CPU per update without metrics: {p * 1e6:.2f} us (runs: {', '.join(f'{x * 1e6:.2f}' for x in plain)})"
    )
    print(
        f"relay CPU per update with metrics:    {m * 1e6:.2f} us (runs: {', '.join(f'{x * 1e6:.2f}' for x in measured)})"
    )
    print(f"with / without: {m / p:.3f}  (+{(m - p) * 1e9:.0f} ns per update)")
    none, counted = await hook_cost(200_000, args.reps)
    print(
        f"change hooks alone per update: {none * 1e9:.0f} ns without, {counted * 1e9:.0f} ns with SyncCounters "
        f"(+{(counted - none) * 1e9:.0f} ns)"
    )


if __name__ == "__main__":
    asyncio.run(main())
