"""WORKERS=2 against WORKERS=1 on this machine: aggregate relay over many rooms, and where the CPU went.

    .venv/bin/python bench/workers_relay.py [--rooms 40] [--items 500] [--reps 3] [--redis redis://127.0.0.1:6379/0]

Each repetition starts `webhost-sync serve` with WORKERS=1, then with WORKERS=2 (the order alternates),
on one new PostgreSQL database and Redis (a random REDIS_PREFIX; both runs use the Redis fan-out, so
the only difference is the number of processes). One Node load client (clients/relay_many.js) opens
a writer and a reader in each of `--rooms` rooms over the shared port and sends `--items` updates per
writer at once; throughput = delivered updates / (first send -> last arrival). Over that window the
CPU of the server (the supervisor and every worker), of its PostgreSQL backends, of redis-server, of
the load client, and of the whole machine (/proc/stat: what the rest of the machine, other sessions
included, took) is reported. Numbers only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness.procstat import backend_cpu_seconds, cpu_seconds  # noqa: E402

from storage import migrator  # noqa: E402
from tests.support import databases, sync_peers  # noqa: E402
from tests.support.server import ServerProcess, free_port, process_tree  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdef0123456789"
CLIENT = ROOT / "bench" / "clients" / "relay_many.js"


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (the workers' own ports)."""
    while True:
        base = free_port()
        socks = []
        try:
            for i in range(count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()


def tree_cpu(pid: int) -> float:
    total = 0.0
    for p in process_tree(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


def redis_cpu() -> float:
    total = 0.0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "redis-server":
                    total += cpu_seconds(int(proc.name))
            except OSError:
                continue
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def run_once(workers: int, args, database_url: str, customer, token: str, tmp: Path) -> dict:
    env = {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp / f"data-{workers}"),
        "SECRET_KEY": SECRET,
        "LOG_LEVEL": "warning",
        "REDIS_URL": args.redis,
        "REDIS_PREFIX": f"bench-{secrets.token_hex(6)}:",
        "CONNECTION_LIMITS": "off",
        "REST_RATE_LIMIT_PER_MINUTE": "0",
        "WORKERS": str(workers),
        "WORKER_PORT_BASE": str(free_ports(workers)),
    }
    server = ServerProcess(env, log_path=tmp / f"server-{workers}-{uuid.uuid4().hex[:4]}.log").start()
    try:
        time.sleep(2.0 if workers > 1 else 0.5)  # every worker up (the shared port answers with the first)
        db_name = database_url.rsplit("/", 1)[1].split("?", 1)[0]
        client = subprocess.Popen(
            ["node", str(CLIENT), "--server", f"{server.ws_url}/sync/{customer.slug}", "--token", token]
            + ["--rooms", str(args.rooms), "--items", str(args.items), "--prefix", f"r{uuid.uuid4().hex[:6]}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None and client.stdin is not None
        ready = json.loads(client.stdout.readline())
        if ready.get("event") != "ready":
            raise RuntimeError(f"load client: {ready}")
        c0 = cpu_seconds(client.pid)
        s0, pg0, r0, (b0, t0) = tree_cpu(server.proc.pid), backend_cpu_seconds(db_name), redis_cpu(), machine_busy()
        client.stdin.write("go\n")
        client.stdin.flush()
        line = client.stdout.readline()
        s1, pg1, r1, (b1, t1) = tree_cpu(server.proc.pid), backend_cpu_seconds(db_name), redis_cpu(), machine_busy()
        c1 = cpu_seconds(client.pid)
        client.wait(60)
    finally:
        server.stop()
    done = json.loads(line)
    if done.get("event") != "done":
        raise RuntimeError(f"load client: {done}")
    window = (done["done"] - done["t0"]) / 1000
    span = t1 - t0  # machine CPU-seconds available over the same span (cores x wall)
    return {
        "workers": workers,
        "delivered": done["delivered"],
        "expected": done["expected"],
        "updates_per_s": round(done["delivered"] / window),
        "window_s": round(window, 2),
        # CPU from "go" to the last arrival, in cores (CPU-seconds per second of wall time)
        "server_cores": round((s1 - s0) / (span / os.cpu_count()), 2),
        "postgres_cores": round((pg1 - pg0) / (span / os.cpu_count()), 2),
        "redis_cores": round((r1 - r0) / (span / os.cpu_count()), 2),
        "client_cores": round((c1 - c0) / (span / os.cpu_count()), 2),
        "machine_busy_cores": round((b1 - b0) / (span / os.cpu_count()), 2),
        "load": os.getloadavg()[0],
    }


async def setup(admin: str) -> tuple[str, object]:
    url = await databases.create_database(admin, prefix="wh_bench")
    await migrator.migrate(url)
    customer = await sync_peers.create_customer(url, slug="bench")
    return url, customer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=40)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    admin = databases.admin_url()
    url, customer = asyncio.run(setup(admin))
    token = sync_peers.token(SECRET, customer)
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="wh-workers-") as tmp:
            for rep in range(args.reps):
                for workers in (1, 2) if rep % 2 == 0 else (2, 1):
                    result = run_once(workers, args, url, customer, token, Path(tmp))
                    result["rep"] = rep
                    results.append(result)
                    print(json.dumps(result), flush=True)
    finally:
        asyncio.run(databases.drop_database(admin, url))
    print(f"\nuptime: {Path('/proc/loadavg').read_text().strip()}  cores: {os.cpu_count()}")
    print(
        "| rep | WORKERS | updates/s | window s | server cores | PostgreSQL cores | redis cores | load client cores | machine busy cores |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['rep']} | {r['workers']} | {r['updates_per_s']:,} | {r['window_s']} | {r['server_cores']} | "
            f"{r['postgres_cores']} | {r['redis_cores']} | {r['client_cores']} | {r['machine_busy_cores']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
