"""REST latency at a fixed request rate: p50/p95/p99 of an authenticated list and an authenticated
create, open loop (each request has a scheduled start; latency is measured from it, so a stalled
server cannot hide its queue - no coordinated omission).

    .venv/bin/python bench/rest_latency.py                 # starts its own server and database
    .venv/bin/python bench/rest_latency.py --rate 500 --seconds 20 --base-url http://127.0.0.1:8080 \
        --operator-email ops@example.com --operator-password ...   # against a running server

Without --base-url it creates a fresh database on TEST_PG_URL's server (default
postgresql://postgres@127.0.0.1:5432/postgres), runs `webhost-sync serve` on a free port, measures,
then stops the server and drops the database. The client is a minimal keep-alive HTTP/1.1 client
on asyncio (uvloop when installed) so that it costs the (shared) CPU as little as possible. Server and
PostgreSQL-backend CPU per request are read from /proc (own server only) with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support import databases  # noqa: E402  (one home for throwaway databases: tests and bench)

ADMIN_URL = os.environ.get("TEST_PG_URL", databases.DEFAULT_ADMIN_URL)


class Connection:
    """One keep-alive HTTP/1.1 connection; requests on it run one at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length, keep_alive = 0, True
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                keep_alive = False
        payload = await self.reader.readexactly(length) if length else b""
        if not keep_alive:  # e.g. Hypercorn's keep_alive_max_requests reached: reconnect next time
            self.close()
            self.reader = self.writer = None
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def call(base_url: str, method: str, path: str, token: str | None = None, payload: dict | None = None):
    u = urlparse(base_url)
    conn = Connection(u.hostname, u.port)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        status, body = await conn.request(method, path, headers, json.dumps(payload).encode() if payload else b"")
    finally:
        conn.close()
    return status, (json.loads(body) if body else None)


async def open_loop(base_url: str, rate: float, seconds: float, make_request, connections: int = 64) -> dict:
    """Send `rate` requests per second for `seconds`; each latency counts from its scheduled start."""
    u = urlparse(base_url)
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(Connection(u.hostname, u.port))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    total = int(rate * seconds)
    start = time.perf_counter() + 0.2

    async def one(i: int) -> None:
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await pool.get()
        try:
            method, path, headers, body = make_request(i)
            status, _ = await conn.request(method, path, headers, body)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            conn.close()
            conn = Connection(u.hostname, u.port)
            status = 599
        finally:
            pool.put_nowait(conn)
        latencies.append(time.perf_counter() - scheduled)
        statuses[status] = statuses.get(status, 0) + 1

    tasks = [asyncio.ensure_future(one(i)) for i in range(total)]
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait().close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return {
        "requests": total,
        "achieved_rate": round(total / elapsed, 1),
        "statuses": statuses,
        "p50_ms": round(pct(50), 2),
        "p95_ms": round(pct(95), 2),
        "p99_ms": round(pct(99), 2),
        "max_ms": round(latencies[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnServer:
    """A fresh database and a `webhost-sync serve` process, cleaned up afterwards."""

    def __init__(self, wrapper: list[str] | None = None) -> None:
        self.wrapper = wrapper or []  # e.g. valgrind and its options (bench/rest_callgrind.py)
        self.database_url: str | None = None
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.tmp = tempfile.TemporaryDirectory(prefix="wh-bench-")

    async def __aenter__(self) -> OwnServer:
        self.database_url = await databases.create_database(ADMIN_URL, prefix="wh_bench")
        bindir = Path(sys.executable).parent
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "SECRET_KEY": "bench-secret-key-0123456789abcdef0123456789",
            "DATA_DIR": self.tmp.name,
            "LOG_LEVEL": "warning",
            "LOG_FORMAT": "json",
        }
        subprocess.run(
            [
                str(bindir / "webhost-sync"),
                "create-operator",
                "--email",
                "bench@example.com",
                "--password",
                "bench-password",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        self.log = open(Path(self.tmp.name) / "server.log", "wb")
        self.proc = subprocess.Popen(
            [*self.wrapper, str(bindir / "webhost-sync"), "serve"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        for _ in range(600 if not self.wrapper else 6000):  # under valgrind start-up takes minutes on a busy machine
            if self.proc.poll() is not None:  # died at start: say what it said, do not wait out the minute
                tail = (Path(self.tmp.name) / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{tail}")
            try:
                status, _ = await call(self.base_url, "GET", "/healthz")
                if status == 200:
                    return self
            except OSError:
                pass
            await asyncio.sleep(0.1)
        self.proc.kill()  # __aexit__ does not run when __aenter__ raises: leave no server behind
        self.proc.wait(30)
        raise RuntimeError("server did not start")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aexit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
        self.log.close()
        await databases.drop_database(ADMIN_URL, self.database_url)
        self.tmp.cleanup()


async def prepare(base_url: str, email: str, password: str, customers: int) -> list[str]:
    """API keys of fresh customers on an effectively unlimited plan (so creates never hit a limit)."""
    status, body = await call(base_url, "POST", "/api/v1/auth/login", payload={"email": email, "password": password})
    assert status == 200, body
    ops = body["token"]
    plan_id = f"bench-{uuid.uuid4().hex[:6]}"
    big = 1_000_000_000
    status, body = await call(
        base_url,
        "POST",
        "/api/v1/plans",
        ops,
        {
            "id": plan_id,
            "name": "Bench",
            "price_cents": 0,
            "vehicle_limit": big,
            "driver_limit": big,
            "geofence_limit": big,
            "gps_points_per_day": big,
            "retention_days": 1,
            "is_public": False,
        },
    )
    assert status == 201, body
    keys = []
    for _ in range(customers):
        slug = f"bench-{uuid.uuid4().hex[:8]}"
        status, body = await call(
            base_url, "POST", "/api/v1/customers", ops, {"slug": slug, "name": "Bench", "plan_id": plan_id}
        )
        assert status == 201, body
        key = body["api_key"]["key"]
        for i in range(25):  # something to list
            await call(
                base_url, "POST", "/api/v1/vehicles", key, {"name": f"seed {i}", "vehicle_identifier": f"seed-{i}"}
            )
        keys.append(key)
    return keys


async def backend_pids(database_url: str | None) -> list[int]:
    """PostgreSQL backends serving the server (its pool connections), to count their CPU too."""
    if database_url is None:
        return []
    import asyncpg

    conn = await asyncpg.connect(ADMIN_URL)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'webhost-sync'",
            urlparse(database_url).path.lstrip("/"),
        )
    finally:
        await conn.close()
    return [r["pid"] for r in rows]


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a local process (Linux), to tell CPU cost from queueing."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    base_url: str,
    keys: list[str],
    rate: float,
    seconds: float,
    server_pid: int | None = None,
    database_url: str | None = None,
) -> dict:
    """Requests go round-robin over the customers' keys (creates of one customer serialise on its
    plan-limit lock, as they must; a platform's 500 creates/s come from many customers)."""
    auths = [{"Authorization": f"Bearer {key}", "Content-Type": "application/json"} for key in keys]
    run = uuid.uuid4().hex[:6]

    def list_request(i):
        return "GET", "/api/v1/vehicles?limit=20", auths[i % len(auths)], b""

    def create_request(i):
        body = json.dumps({"name": f"v{i}", "vehicle_identifier": f"{run}-{i}", "vehicle_type": "van"}).encode()
        return "POST", "/api/v1/vehicles", auths[i % len(auths)], body

    await open_loop(base_url, rate, 2, list_request)  # warm-up: connections, pools, statement caches
    results = {}
    for name, make in (
        ("list GET /api/v1/vehicles?limit=20", list_request),
        ("create POST /api/v1/vehicles", create_request),
    ):
        backends = await backend_pids(database_url)
        before, before_pg = cpu_seconds(server_pid), {p: cpu_seconds(p) for p in backends}
        load = os.getloadavg()[0]
        results[name] = r = await open_loop(base_url, rate, seconds, make)
        r["load_average"] = round(load, 1)
        if before is not None:
            r["server_cpu_ms_per_req"] = round((cpu_seconds(server_pid) - before) / r["requests"] * 1000, 2)
        if database_url is not None:
            # Backends the pool opened during the run count from zero (their whole life is in it).
            after_pg = {p: cpu_seconds(p) for p in set(backends) | set(await backend_pids(database_url))}
            used = sum(now - (before_pg.get(p) or 0) for p, now in after_pg.items() if now is not None)
            r["postgres_cpu_ms_per_req"] = round(used / r["requests"] * 1000, 2)
    return results


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second (default 500)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement")
    parser.add_argument("--base-url", help="measure a running server instead of starting one")
    parser.add_argument("--customers", type=int, default=10, help="customers the requests are spread over")
    parser.add_argument("--operator-email", default="bench@example.com")
    parser.add_argument("--operator-password", default="bench-password")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    async def run(base_url: str, pid: int | None = None, database_url: str | None = None) -> dict:
        keys = await prepare(base_url, args.operator_email, args.operator_password, args.customers)
        return await measure(base_url, keys, args.rate, args.seconds, pid, database_url)

    if args.base_url:
        results = await run(args.base_url)
    else:
        async with OwnServer() as server:
            results = await run(server.base_url, server.proc.pid, server.database_url)
    if args.json:
        print(json.dumps({"rate": args.rate, "seconds": args.seconds, "customers": args.customers, "results": results}))
    else:
        print(
            f"REST latency, open loop at {args.rate:g} req/s for {args.seconds:g} s each over {args.customers} "
            f"customers (target p95 < 10 ms)"
        )
        for name, r in results.items():
            ok = "ok " if r["p95_ms"] < 10 else "MISS"
            print(
                f"  {ok} {name:38} p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms"
                f"  max {r['max_ms']:7.2f} ms  rate {r['achieved_rate']}/s  statuses {r['statuses']}"
                + (f"  server cpu {r['server_cpu_ms_per_req']} ms/req" if "server_cpu_ms_per_req" in r else "")
                + (f"  postgres cpu {r['postgres_cpu_ms_per_req']} ms/req" if "postgres_cpu_ms_per_req" in r else "")
                + f"  load {r['load_average']}"
            )
    return 0


if __name__ == "__main__":
    try:  # the client shares the machine's CPU with the server: the cheaper loop when installed
        import uvloop
    except ImportError:
        raise SystemExit(asyncio.run(main())) from None
    raise SystemExit(uvloop.run(main()))
