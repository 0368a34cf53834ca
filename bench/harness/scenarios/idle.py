"""(3) Idle connections: many synced, silent clients over many rooms. Memory per room and per
connection from RSS deltas, and the CPU the server burns while nobody writes.

Phase A opens one client per room (RSS delta = rooms + their first connection); phase B adds the
rest to the same rooms (RSS delta = connections only). per room = A / rooms - per connection."""

from __future__ import annotations

import time

from .. import procstat
from ..clients import JsClient, shares, stop_all
from . import Metric, RunContext, Scenario, register


def run(ctx: RunContext, server, rep: int) -> dict[str, float]:
    p = scenario.counts(ctx.mode)
    rooms, clients, procs = p["rooms"], p["clients"], p["processes"]
    prefix = f"idle-{server.side}-{rep}"
    opened: list[JsClient] = []

    def open_clients(count: int, first: int, processes: int) -> tuple[int, float]:
        batch = []
        start = time.monotonic()
        offset = first
        for share in shares(count, processes):
            batch.append(
                JsClient(
                    "idle.js",
                    ctx.log_dir,
                    server=server.ws_base,
                    prefix=prefix,
                    token=server.token,
                    rooms=rooms,
                    clients=share,
                    first=offset,
                    parallel=p["parallel"],
                    timeout=p["timeout"],
                    hold=p["timeout"] + 120,
                )
            )
            offset += share
        opened.extend(batch)
        synced = sum(c.wait("ready", p["timeout"] + 30)["synced"] for c in batch)
        return synced, time.monotonic() - start

    try:
        time.sleep(p["settle"])
        rss0 = procstat.rss_bytes(server.pid)
        synced_a, _ = open_clients(rooms, 0, 1)
        time.sleep(p["settle"])
        rss_a = procstat.rss_bytes(server.pid)
        cpu_b0, _ = server.cpu_seconds()
        synced_b, seconds_b = open_clients(clients - rooms, rooms, procs)
        cpu_b1, _ = server.cpu_seconds()
        time.sleep(p["settle"])
        rss_b = procstat.rss_bytes(server.pid)
        cpu0, db0 = server.cpu_seconds()
        time.sleep(p["idle_window"])
        cpu1, db1 = server.cpu_seconds()
        rss_end = procstat.rss_bytes(server.pid)
    finally:
        stop_all(opened)
    per_conn = (rss_b - rss_a) / max(1, synced_b)
    return {
        "connected": synced_a + synced_b,
        "connect_per_s": synced_b / seconds_b if seconds_b else None,
        "cpu_us_per_connect": 1e6 * (cpu_b1 - cpu_b0) / max(1, synced_b),
        "kib_per_connection": per_conn / 1024,
        "kib_per_room": ((rss_a - rss0) / max(1, synced_a) - per_conn) / 1024,
        "rss_mib": rss_end / 2**20,
        "idle_cpu_pct": 100.0 * (cpu1 - cpu0) / p["idle_window"],
        "db_idle_cpu_pct": None if db0 is None else 100.0 * (db1 - db0) / p["idle_window"],
    }


scenario = register(
    Scenario(
        key="idle",
        title="Idle connections: many clients over many rooms",
        issue="8",
        metrics=[
            Metric("kib_per_connection", "memory per connection (RSS delta)", "KiB"),
            Metric("kib_per_room", "memory per room (RSS delta)", "KiB"),
            Metric("rss_mib", "server RSS with all connected", "MiB"),
            Metric("idle_cpu_pct", "server CPU while idle", "% of a core"),
            Metric("db_idle_cpu_pct", "PostgreSQL CPU while idle", "% of a core", ""),
            Metric("connect_per_s", "connections opened (phase B)", "conn/s", "higher"),
            Metric("cpu_us_per_connect", "server CPU per connection opened (phase B)", "µs"),
            Metric("connected", "clients connected", "", ""),
        ],
        params={
            "full": {
                "clients": 10_000,
                "rooms": 1_000,
                "processes": 3,
                "parallel": 100,
                "settle": 3,
                "idle_window": 15,
                "reps": 1,
                "timeout": 240,
            },
            "smoke": {
                "clients": 40,
                "rooms": 10,
                "processes": 2,
                "parallel": 10,
                "settle": 0.2,
                "idle_window": 0.5,
                "reps": 1,
                "timeout": 30,
            },
        },
        notes="One repetition per side in the full run (10,000 handshakes per side is the slowest step). "
        "RSS deltas include allocator slack; a negative per-room figure means a room costs less than "
        "the noise of the measurement.",
        run=run,
    )
)
