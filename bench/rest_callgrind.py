"""Instructions per REST request in the server process: valgrind callgrind, user space only, so the
number does not depend on what else the (shared) machine is doing; it does not see the kernel's
share (syscalls, loopback wake-ups) that `bench/rest_latency.py`'s CPU per request includes.

    .venv/bin/python bench/rest_callgrind.py [--requests 200]

The server (`webhost-sync serve` under callgrind, own database as in rest_latency.py) serves a
warm-up of each kind, then `--requests` sequential requests of one kind; the whole process's count
of a run without them is subtracted (start-up and warm-up repeat to ~0.05%). Four runs of ~40 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

import rest_latency as bench

KINDS = ("list", "create", "healthz")
WARM_UP = 30


async def total_instructions(counts: dict[str, int]) -> int:
    """Instructions of the whole server process for a run with `counts` requests of each kind."""
    with tempfile.TemporaryDirectory(prefix="wh-callgrind-") as out:
        profile = Path(out) / "callgrind.out"
        server = bench.OwnServer(["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}", sys.executable])
        async with server:
            keys = await bench.prepare(server.base_url, "bench@example.com", "bench-password", 1)
            u = urlparse(server.base_url)
            conn = bench.Connection(u.hostname, u.port)
            auth = {"Authorization": f"Bearer {keys[0]}", "Content-Type": "application/json"}
            run = uuid.uuid4().hex[:6]
            requests = {
                "list": lambda i: ("GET", "/api/v1/vehicles?limit=20", auth, b""),
                "create": lambda i: (
                    "POST",
                    "/api/v1/vehicles",
                    auth,
                    json.dumps({"name": f"v{i}", "vehicle_identifier": f"{run}-{i}", "vehicle_type": "van"}).encode(),
                ),
                "healthz": lambda i: ("GET", "/healthz", {}, b""),
            }
            n = 0
            for kind in KINDS:
                for _ in range(WARM_UP + counts.get(kind, 0)):
                    n += 1
                    status, _ = await conn.request(*requests[kind](n))
                    assert status < 300, (kind, status)
            conn.close()
        for line in profile.read_text().splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no totals")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests of each kind measured")
    args = parser.parse_args()
    if subprocess.run(["valgrind", "--version"], capture_output=True).returncode != 0:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    baseline = await total_instructions({})
    for kind in KINDS:
        total = await total_instructions({kind: args.requests})
        print(f"{kind:8} {(total - baseline) / args.requests / 1e6:.2f} M instructions/request")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
