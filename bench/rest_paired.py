"""Server CPU per REST request of two trees side by side: another tree's server (its code on
PYTHONPATH, e.g. main's `git archive` in /tmp/rest-main) and this tree's, each with its own database,
requests interleaved one by one (other, this, other, this, ...) over one keep-alive connection each,
so both see the same machine at the same moments (on a shared 2-core machine whose speed drifts by
a factor of 1.5 within minutes, runs one after the other could not be compared).

    .venv/bin/python bench/rest_paired.py --other /tmp/rest-main [--requests 3000] [--rounds 3]

Per round: `--requests` lists (GET /api/v1/vehicles?limit=20), then as many creates, after 50 of
warm-up each; prints each server's CPU per request (user + sys from /proc) over the same period.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from urllib.parse import urlparse

import rest_latency as bench

TICKS = os.sysconf("SC_CLK_TCK")
WARM_UP = 50


def cpu(pid: int) -> tuple[int, int]:
    """(user, system) clock ticks of a process."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


async def client(server: bench.OwnServer):
    keys = await bench.prepare(server.base_url, "bench@example.com", "bench-password", 1)
    u = urlparse(server.base_url)
    conn = bench.Connection(u.hostname, u.port)
    auth = {"Authorization": f"Bearer {keys[0]}", "Content-Type": "application/json"}
    run = uuid.uuid4().hex[:6]

    def make(kind: str, i: int):
        if kind == "list":
            return "GET", "/api/v1/vehicles?limit=20", auth, b""
        body = {"name": f"v{i}", "vehicle_identifier": f"{run}-{i}", "vehicle_type": "van"}
        return "POST", "/api/v1/vehicles", auth, json.dumps(body).encode()

    return conn, make


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", required=True, help="the other tree's root, put on its server's PYTHONPATH")
    parser.add_argument("--requests", type=int, default=3000, help="requests of each kind per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ["REST_RATE_LIMIT_PER_MINUTE"] = "10000000"  # never 429
    os.environ["PYTHONPATH"] = args.other
    other = bench.OwnServer()
    await other.__aenter__()
    del os.environ["PYTHONPATH"]
    this = bench.OwnServer()
    try:
        await this.__aenter__()
        sides = {"other": (other, *await client(other)), "this": (this, *await client(this))}
        k = 0
        for r in range(args.rounds):
            for kind in ("list", "create"):
                for _srv, conn, make in sides.values():
                    for _ in range(WARM_UP):
                        k += 1
                        await conn.request(*make(kind, k))
                start = {name: cpu(srv.proc.pid) for name, (srv, _, _) in sides.items()}
                load = os.getloadavg()[0]
                for _ in range(args.requests):
                    k += 1
                    for name, (_srv, conn, make) in sides.items():
                        status, _ = await conn.request(*make(kind, k))
                        assert status < 300, (name, kind, status)
                line = [f"round {r + 1} {kind:6} load {load:.1f}"]
                for name, (srv, _, _) in sides.items():
                    end, begin = cpu(srv.proc.pid), start[name]
                    user = (end[0] - begin[0]) / TICKS / args.requests * 1e6
                    system = (end[1] - begin[1]) / TICKS / args.requests * 1e6
                    line.append(f"{name} {user + system:.0f} us (user {user:.0f} sys {system:.0f})")
                print(" | ".join(line), flush=True)
        for _srv, conn, _make in sides.values():
            conn.close()
    finally:
        if this.proc is not None:
            await this.__aexit__(None, None, None)
        await other.__aexit__(None, None, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
