#!/usr/bin/env python3
"""GPS points materialized per second, end to end, against the raw stage+merge COPY rate of the
same PostgreSQL in the same run.

End to end: real JS clients (client-examples/js/tracker.mjs on @webhost/sync-client, yjs) each holding a
day's track document recorded offline (--points fixes in one update) connect at once to a real
`webhost-sync serve` (each builds its document first, then all connect at the same agreed instant,
so node start-up is not in the measurement; the raw path's rows are built before its clock starts
too); the clock runs from the first connection until every point is committed as a
row (track_progress reaches the total). That covers websocket, CRDT apply, the observer, decode,
filters, quota, geofences (--geofences circles on the route), COPY + merge, latest position, usage
and the fleet document.

Raw: the same number of rows, the same batch size, written by storage.positions.stage_and_merge
(binary COPY of numpy columns into the staging table + INSERT ... ON CONFLICT DO NOTHING, one transaction per batch)
from one Python process with no pipeline around it.

    .venv/bin/python bench/gps_ingest.py [--vehicles 4] [--points 50000] [--geofences 20] [--rounds 2]

Needs PostgreSQL (TEST_PG_URL, else 127.0.0.1:5432 as postgres, else a private pgserver; a database is
created and dropped) and `npm ci` in client-examples/js. Prints a JSON summary as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import numpy as np
import pycrdt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage import AppRole, Database, migrator, partitions  # noqa: E402
from storage import positions as position_store  # noqa: E402
from sync_server.config import Settings  # noqa: E402
from sync_server.domain.accounts import sync_tokens  # noqa: E402
from tests.support import databases  # noqa: E402
from tests.support.server import child_pids  # noqa: E402

ADMIN_URL = databases.admin_url()  # TEST_PG_URL, the machine's server, or a private pgserver
SECRET = "bench-secret-key-0123456789abcdef0123456789"
JS = ROOT / "client-examples" / "js" / "tracker.mjs"
CLIENT_BUILD_MS = 1500  # node start-up; plus 1 ms per 25 points for building the document


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _create_database() -> str:
    url = await databases.create_database(ADMIN_URL, prefix="wh_bench")
    await migrator.migrate(url)
    return url


async def _customer(owner: asyncpg.Connection, slug: str, vehicles: int, geofences: int) -> tuple[str, list]:
    cid = await owner.fetchval("INSERT INTO customers (slug, name) VALUES ($1, $1) RETURNING id", slug)
    await owner.execute("INSERT INTO subscriptions (customer_id, plan_id) VALUES ($1, 'business')", cid)
    vids = [
        await owner.fetchval(
            "INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, $2, $2) RETURNING id",
            cid,
            f"{slug}-v{i}",
        )
        for i in range(vehicles)
    ]
    for i in range(geofences):  # circles along the route (lat 52.5, lng 13.40 .. 13.42)
        await owner.execute(
            "INSERT INTO geofences (customer_id, name, kind, center_lat, center_lng, radius_meters) "
            "VALUES ($1, $2, 'circle', 52.5, $3, 150)",
            cid,
            f"g{i}",
            13.40 + 0.02 * (i + 0.5) / max(geofences, 1),
        )
    return str(cid), vids


def _fixes(day: dt.date, n: int) -> position_store.Fixes:
    """The raw path's rows: one fix a second from midnight, moving east (the clients' route)."""
    base = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)
    i = np.arange(n)
    return position_store.Fixes(
        base + i * 1000,
        np.full(n, 52.5),
        13.4 + (i % 1000) * 0.00002,
        np.full(n, 1.36),
        np.full(n, 90.0),
        np.full(n, 5.0),
        np.full(n, np.nan),
    )


async def raw_copy_rate(
    url: str, owner: asyncpg.Connection, day: dt.date, vehicles: int, points: int, batch: int, parallel: bool = False
) -> dict:
    """Rows/s of staged COPY + merge alone: vehicles one after the other (the baseline), or with
    `parallel` one connection per vehicle at once (as the server materializes vehicles now)."""
    cid, vids = await _customer(owner, f"raw-{uuid.uuid4().hex[:6]}", vehicles, 0)
    db = await Database(url, AppRole.from_secret(SECRET), min_size=1, max_size=vehicles if parallel else 2).open()
    try:
        await partitions.ensure(db, day, day)
        cid = uuid.UUID(cid)
        all_fixes = [(vid, _fixes(day, points)) for vid in vids]

        async def write(vid, fixes) -> None:
            for i in range(0, points, batch):
                async with db.tenant(cid) as conn:
                    await position_store.commit_without_waiting_for_flush(conn)
                    await position_store.stage_and_merge(conn, cid, vid, "doc", fixes.take(slice(i, i + batch)))

        pg_before, own_before = await _backend_cpu(owner), time.process_time()
        started = time.perf_counter()
        if parallel:
            await asyncio.gather(*(write(vid, fixes) for vid, fixes in all_fixes))
        else:
            for vid, fixes in all_fixes:
                await write(vid, fixes)
        elapsed = time.perf_counter() - started
        pg_cpu, own_cpu = _delta(pg_before, await _backend_cpu(owner)), time.process_time() - own_before
    finally:
        await db.close()
    n = vehicles * points
    return {
        "points_per_s": round(n / elapsed),
        "pg_cpu_us_per_point": round(pg_cpu / n * 1e6, 2),
        "client_cpu_us_per_point": round(own_cpu / n * 1e6, 2),
        "projected_points_per_s": round(n / max(pg_cpu, own_cpu)),
    }


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)  # noqa: E731
    return {"n": len(ordered), "p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1], 1)}


async def _checkpoint(owner: asyncpg.Connection) -> None:
    try:
        await owner.execute("CHECKPOINT")
    except asyncpg.InsufficientPrivilegeError:  # not a superuser: the phases just start less evenly
        pass


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live descendants (the server and its track reader helper)."""
    return _cpu_seconds(pid) + sum(_tree_cpu(child) for child in child_pids(pid))


async def _backend_cpu(owner: asyncpg.Connection) -> dict[int, float]:
    """CPU seconds so far of every PostgreSQL backend on this database (same machine only)."""
    pids = await owner.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return {r["pid"]: _cpu_seconds(r["pid"]) for r in pids}


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


async def _dashboard(url: str, stop: asyncio.Event) -> list[tuple[float, float]]:
    """A dispatcher's dashboard on the same node, in another room: sync round trips (step 1 -> the
    server's step 2) every 20 ms until `stop`: (sent at, epoch seconds; round trip, ms). Whatever holds the node's event
    loop (a large update applied, points decoded on it) shows up here."""
    import websockets

    from sync_server.sync import protocol

    rtts: list[tuple[float, float]] = []
    async with websockets.connect(url, max_size=None) as ws:
        ask = protocol.step1_frame(pycrdt.Doc().get_state())
        while not stop.is_set():
            at, sent = time.time(), time.perf_counter()
            await ws.send(ask)
            while (await ws.recv())[:2] != bytes((protocol.SYNC, protocol.STEP2)):
                pass
            rtts.append((at, (time.perf_counter() - sent) * 1000))
            await asyncio.sleep(0.02)
    return rtts


def _check(
    server: subprocess.Popen, clients: list[subprocess.Popen], log_path: Path, what: str, deadline: float
) -> None:
    """Fail at once, with what the dead process said, when the server or a tracker client exited
    (a client without node_modules dies at start: nothing would ever be materialized), and when
    `deadline` (time.monotonic) passed."""
    if server.poll() is not None:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the server exited with {server.returncode} during {what}; {log_path}:\n{tail}")
    for c in clients:
        if c.poll() not in (None, 0):
            raise RuntimeError(f"a tracker client exited with {c.returncode} during {what}:\n{c.stderr.read()[-4000:]}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"timed out during {what}; server log {log_path}")


async def end_to_end_rate(
    url: str,
    owner: asyncpg.Connection,
    day: dt.date,
    vehicles: int,
    points: int,
    geofences: int,
    batch: int,
    log_dir: Path,
    profile: str | None = None,
    pg_profile: str | None = None,
    readers: int | None = None,
) -> dict:
    slug = f"e2e-{uuid.uuid4().hex[:6]}"
    cid, vids = await _customer(owner, slug, vehicles, geofences)
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SECRET_KEY": SECRET,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATA_DIR": str(log_dir / "data"),
        "LOG_FORMAT": "json",
        "TRACKING_BATCH_POINTS": str(batch),
        "MIGRATE_ON_START": "false",
        **({"TRACKING_READERS": str(readers)} if readers is not None else {}),
    }
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "webhost-sync"), "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    spawned: list[subprocess.Popen] = []
    try:
        import httpx

        for _ in range(300):
            _check(server, [], log_path, "server start", time.monotonic() + 1)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        token = sync_tokens.mint(
            SECRET, customer_id=cid, customer_slug=slug, docs=["tracks/*", "board"], mode="rw", ttl_seconds=3600
        )[0]
        start_ms = int(dt.datetime(day.year, day.month, day.day, 1, tzinfo=dt.UTC).timestamp() * 1000)

        def client(vid, n, begin, on=day, connect_at=0):
            spawned.append(_tracker(vid, n, begin, on, connect_at))
            return spawned[-1]

        def _tracker(vid, n, begin, on, connect_at):
            return subprocess.Popen(
                [
                    "node",
                    str(JS),
                    "--server",
                    f"ws://127.0.0.1:{port}/sync/{slug}",
                    "--token",
                    token,
                    "--vehicle",
                    str(vid),
                    "--day",
                    on.isoformat(),
                    "--points",
                    str(n),
                    "--start-ms",
                    str(begin),
                    "--prebuilt",
                    "1",
                    "--connect-at",
                    str(connect_at),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=JS.parent,
            )

        # warm-up (not measured): one small document per vehicle, so pooled connections have their
        # plans and caches, like a server that has been running
        warm = [client(vid, 500, start_ms - 86_400_000, day - dt.timedelta(days=1)) for vid in vids]
        deadline = time.monotonic() + 120
        while (
            await owner.fetchval(
                "SELECT coalesce(sum(elements), 0) FROM track_progress WHERE customer_id = $1", uuid.UUID(cid)
            )
            < 500 * vehicles
        ):
            _check(server, warm, log_path, "warm-up", deadline)
            await asyncio.sleep(0.01)
        for c in warm:
            c.communicate(timeout=120)
        (log_dir / "warm").write_text(str(log_path.stat().st_size))
        cpu_before, pg_before = _tree_cpu(server.pid), await _backend_cpu(owner)
        spy = None
        if profile:  # where the server's time goes: py-spy samples, folded stacks
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(server.pid),
                    "--format",
                    "raw",
                    "--rate",
                    "250",
                    "-o",
                    profile,
                ]
                + (["--native"] if os.environ.get("PYSPY_NATIVE") else []),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
        perf = None
        if pg_profile:  # where PostgreSQL's time goes: perf samples of this database's backends
            pids = ",".join(str(pid) for pid in pg_before)
            perf = subprocess.Popen(
                ["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-o", pg_profile, "-p", pids],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
        # the phones start, build their day offline, then connect together: the clock runs from then
        connect_at = int(time.time() * 1000) + CLIENT_BUILD_MS + points // 25
        clients = [client(vid, points, start_ms, connect_at=connect_at) for vid in vids]
        stop_dashboard = asyncio.Event()
        dashboard = asyncio.ensure_future(
            _dashboard(f"ws://127.0.0.1:{port}/sync/{slug}/board?token={token}", stop_dashboard)
        )
        total = vehicles * points + 500 * vehicles
        deadline = time.monotonic() + 600
        while True:
            done = await owner.fetchval(
                "SELECT coalesce(sum(elements), 0) FROM track_progress WHERE customer_id = $1", uuid.UUID(cid)
            )
            if done >= total:
                finished = time.time()
                break
            _check(server, clients, log_path, f"{done} of {total} points materialized", deadline)
            await asyncio.sleep(0.01)
        cpu = _tree_cpu(server.pid) - cpu_before
        stop_dashboard.set()
        rtts = await dashboard
        for profiler in (spy, perf):
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(30)
        pg_after = await _backend_cpu(owner)
        pg_cpu = _delta(pg_before, pg_after)
        opened = [pid for pid in pg_after if pid not in pg_before]  # backends the server's pools opened meanwhile
        outputs = [json.loads(c.communicate(timeout=120)[0].strip().splitlines()[-1]) for c in clients]
        first_connect = min(o["connect_ms"] for o in outputs) / 1000
        rows = await owner.fetchval(
            "SELECT count(*) FROM gps_positions WHERE customer_id = $1 AND time >= $2",
            uuid.UUID(cid),
            dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC),
        )
        events = await owner.fetchval(
            "SELECT count(*) FROM geofence_events WHERE customer_id = $1 AND time >= $2",
            uuid.UUID(cid),
            dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC),
        )
    finally:
        for c in spawned:  # a failed run leaves no tracker client behind
            if c.poll() is None:
                c.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    if os.environ.get("GPS_BENCH_LOGS"):  # keep the server's log (a batch timeline) for a look afterwards
        (Path(os.environ["GPS_BENCH_LOGS"]) / log_path.name).write_bytes(log_path.read_bytes())
    measured = log_path.read_bytes()[int((log_dir / "warm").read_text()) :].decode(errors="replace")
    batches = [json.loads(line) for line in measured.splitlines() if '"tracking_batch"' in line]
    elapsed = finished - first_connect
    total -= 500 * vehicles
    return {
        "points": total,
        "rows": rows,
        "geofence_events": events,
        "seconds": round(elapsed, 3),
        "points_per_s": round(total / elapsed),
        "server_cpu_s": round(cpu, 2),
        "pg_cpu_s": round(pg_cpu, 2),
        "server_cpu_us_per_point": round(cpu / total * 1e6, 2),
        "pg_cpu_us_per_point": round(pg_cpu / total * 1e6, 2),
        # one server process (one core) and PostgreSQL (the other core) working at once
        "projected_points_per_s": round(total / max(cpu, pg_cpu)),
        "dashboard_rtt_ms": _percentiles([ms for at, ms in rtts if at >= first_connect]),
        "backends_opened": len(opened),
        "backends_opened_cpu_s": round(sum(pg_after[p] for p in opened), 3),
        "batches": len(batches),
        "commit_ms_sum": round(sum(b["ms"] for b in batches), 1),
        "step_ms_sum": {
            k: round(sum(b.get("step_ms", {}).get(k, 0) for b in batches), 1)
            for k in (batches[0].get("step_ms", {}) if batches else {})
        },
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vehicles", type=int, default=4)
    ap.add_argument("--points", type=int, default=50_000, help="points per vehicle (one track document each)")
    ap.add_argument("--geofences", type=int, default=20)
    ap.add_argument(
        "--batch",
        type=int,
        default=Settings().tracking_batch_points,
        help="TRACKING_BATCH_POINTS for both paths (default: the server's)",
    )
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", help="write py-spy folded stacks of the server's measured phase here")
    ap.add_argument("--pg-profile", help="write `perf record` samples of the database's backends (measured phase) here")
    ap.add_argument("--readers", type=int, help="TRACKING_READERS for the server (default: the server's)")
    args = ap.parse_args()
    url = await _create_database()
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    owner = await asyncpg.connect(url)
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="gps-bench-") as tmp:
            for round_no in range(args.rounds):
                # Each phase writes a day of its own (a fresh partition: inserts into a bigger index
                # are slower, which favoured whichever ran first) and starts from a checkpoint (the
                # previous phase's dirty pages flushed, not competing for the two cores); the raw
                # rate is the mean of one run just before and one just after the end-to-end run:
                # the machine's speed drifts within a minute.
                day, raw_day, raw_day_after, parallel_day = (
                    yesterday - dt.timedelta(days=4 * round_no + k) for k in range(4)
                )
                print(f"round {round_no + 1}: raw stage+merge COPY ...", file=sys.stderr, flush=True)
                await _checkpoint(owner)
                raw_before = await raw_copy_rate(url, owner, raw_day, args.vehicles, args.points, args.batch)
                print(f"round {round_no + 1}: end to end ...", file=sys.stderr, flush=True)
                await _checkpoint(owner)
                e2e = await end_to_end_rate(
                    url,
                    owner,
                    day,
                    args.vehicles,
                    args.points,
                    args.geofences,
                    args.batch,
                    Path(tmp),
                    args.profile,
                    args.pg_profile,
                    args.readers,
                )
                await _checkpoint(owner)
                raw_after = await raw_copy_rate(url, owner, raw_day_after, args.vehicles, args.points, args.batch)
                raw = {key: round((raw_before[key] + raw_after[key]) / 2, 2) for key in raw_before}
                raw["before_and_after"] = [raw_before["points_per_s"], raw_after["points_per_s"]]
                e2e["raw_copy"] = raw
                e2e["raw_copy_parallel"] = await raw_copy_rate(
                    url, owner, parallel_day, args.vehicles, args.points, args.batch, parallel=True
                )
                e2e["ratio_to_copy"] = round(e2e["points_per_s"] / raw["points_per_s"], 3)
                e2e["projected_ratio_to_copy"] = round(e2e["projected_points_per_s"] / raw["projected_points_per_s"], 3)
                results.append(e2e)
                print(
                    f"round {round_no + 1}: end-to-end {e2e['points_per_s']:,} points/s "
                    f"({e2e['rows']:,} rows, {e2e['geofence_events']} events, {e2e['seconds']} s; CPU per point: "
                    f"server {e2e['server_cpu_us_per_point']} us, PostgreSQL {e2e['pg_cpu_us_per_point']} us; "
                    f"{e2e['batches']} batches, wall ms in transactions {e2e['step_ms_sum']}); "
                    f"raw stage+merge COPY {raw['points_per_s']:,.0f} rows/s (before and after: "
                    f"{raw['before_and_after']}; PostgreSQL {raw['pg_cpu_us_per_point']} "
                    f"us/row); ratio {e2e['ratio_to_copy']}; CPU-projected {e2e['projected_points_per_s']:,} vs "
                    f"{raw['projected_points_per_s']:,.0f} = {e2e['projected_ratio_to_copy']}; the same COPY from one connection "
                    f"per vehicle at once {e2e['raw_copy_parallel']['points_per_s']:,} rows/s (PostgreSQL "
                    f"{e2e['raw_copy_parallel']['pg_cpu_us_per_point']} us/row); a dashboard's sync round trips in "
                    f"another room meanwhile (ms): {e2e['dashboard_rtt_ms']}",
                    flush=True,
                )
    finally:
        await owner.close()
        await databases.drop_database(ADMIN_URL, url)
    load = os.getloadavg()
    best = max(results, key=lambda r: r["points_per_s"])
    # The machine's speed swings between rounds (the raw rate alone by up to 1.5x), so over several
    # rounds the medians of each side are the steadier comparison than any one round's ratio.
    e2e_median = statistics.median(r["points_per_s"] for r in results)
    raw_median = statistics.median(r["raw_copy"]["points_per_s"] for r in results)
    summary = {
        "e2e_median_points_per_s": round(e2e_median),
        "raw_median_points_per_s": round(raw_median),
        "ratio_of_medians": round(e2e_median / raw_median, 3),
        "median_ratio": round(statistics.median(r["ratio_to_copy"] for r in results), 3),
    }
    print(
        f"{len(results)} rounds: end to end median {summary['e2e_median_points_per_s']:,} points/s, raw median "
        f"{summary['raw_median_points_per_s']:,} rows/s, ratio of medians {summary['ratio_of_medians']}, median "
        f"ratio {summary['median_ratio']}",
        flush=True,
    )
    print(
        json.dumps(
            {
                "bench": "gps_ingest",
                "cpus": os.cpu_count(),
                "loadavg": [round(x, 2) for x in load],
                "vehicles": args.vehicles,
                "points_per_vehicle": args.points,
                "geofences": args.geofences,
                "rounds": results,
                "best": best,
                "summary": summary,
            }
        )
    )


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except RuntimeError as exc:  # a dead client or server: what it said, no traceback of ours
        sys.exit(f"gps_ingest: {exc}")
