"""Fleet reports over 30 days x 50 vehicles from the rows the pipeline maintains (trips, stops,
fleet_events), and what the analysis costs in the pipeline.

    .venv/bin/python bench/reports.py [--days 30 --vehicles 50 --reps 5] [--append bench/RESULTS.md]

A fresh database on TEST_PG_URL's server (dropped at the end). Rows are generated in SQL (12 trips
and 12 stops per vehicle-day, 4 trip/stop events per trip, 2 overspeed events per day): the
reports read only these. Reference in the same run: the same summary for ONE vehicle-day computed
from raw positions (8,640 fixes, 10 s apart: page through gps_positions, geodesic sum), as
api/tracking.py's daily-summary does; ours covers all 1,500 vehicle-days. Then one vehicle's day
upload (8,640 fixes) through the real pipeline, and a late hour backfilled into its middle.
Median of --reps runs; the load average is printed with the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from storage import AppRole, Database, DatabaseRegistry, migrator  # noqa: E402
from storage import fleet_events as store  # noqa: E402
from storage import positions as position_store  # noqa: E402
from sync_server.domain.tracking import analysis, fleet_events, overspeed  # noqa: E402
from sync_server.domain.tracking.distance import path_length  # noqa: E402
from sync_server.domain.tracking.pipeline import Batch, Pipeline  # noqa: E402
from sync_server.domain.tracking.thresholds import Thresholds  # noqa: E402
from tests.support import databases  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdef0123456789"
UTC = dt.UTC


async def _median(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _populate(db: Database, cid, vehicles: list, start: dt.datetime, days: int) -> None:
    async with db.tenant(cid) as conn:
        for vid in vehicles:
            # trip k of day d: starts at 06:00 + k * 1 h, lasts 40 min; the stop fills the next 20 min
            await conn.execute(
                "INSERT INTO trips (customer_id, vehicle_id, start_time, end_time, start_lat, start_lng, end_lat, "
                "end_lng, distance_m, duration_s, max_speed, avg_speed, path) "
                "SELECT $1, $2, t, t + interval '40 min', 52.5, 13.4, 52.6, 13.5, 20000, 2400, 25, 8.3, "
                "'[[13.4,52.5],[13.45,52.55],[13.5,52.6]]' FROM generate_series(0, $4 - 1) d, generate_series(0, 11) k, "
                "LATERAL (SELECT $3::timestamptz + d * interval '1 day' + interval '6 h' + k * interval '1 h' AS t) x",
                cid,
                vid,
                start,
                days,
            )
            await conn.execute(
                "INSERT INTO stops (customer_id, vehicle_id, start_time, end_time, lat, lng, duration_s, confirmed_ms, "
                "state) SELECT $1, $2, t, t + interval '20 min', 52.6, 13.5, 1200, 0, '{}' "
                "FROM generate_series(0, $4 - 1) d, generate_series(0, 11) k, "
                "LATERAL (SELECT $3::timestamptz + d * interval '1 day' + interval '6 h 40 min' + k * interval '1 h' AS t) x",
                cid,
                vid,
                start,
                days,
            )
            await conn.execute(
                "INSERT INTO fleet_events (customer_id, vehicle_id, type, time, lat, lng, data, decided_ms) "
                "SELECT $1, $2, ty, t.start_time, 52.5, 13.4, '{}'::jsonb, 0 FROM trips t, "
                "unnest(ARRAY['trip.started', 'trip.ended', 'stop.started', 'stop.ended']) ty "
                "WHERE t.customer_id = $1 AND t.vehicle_id = $2 "
                "UNION ALL SELECT $1, $2, $3::text, t.start_time + interval '5 min', 52.5, 13.4, '{\"max_speed_kmh\": 95}'::jsonb, 0 "
                "FROM trips t WHERE t.customer_id = $1 AND t.vehicle_id = $2 AND extract(hour FROM t.start_time) IN (8, 15)",
                cid,
                vid,
                overspeed.OVERSPEED,
            )


def _day_of_fixes(start_ms: int) -> list[dict]:
    """8,640 fixes 10 s apart: an hour of driving at ~36 km/h, then 20 min parked, over and over."""
    out, lat, lng = [], 52.5, 13.4
    for i in range(8640):
        minute = (i // 6) % 80
        if minute < 60:
            lng += 0.0015
            out.append({"t": start_ms + i * 10_000, "lat": lat, "lng": round(lng, 7), "speed": 10.0})
        else:
            out.append({"t": start_ms + i * 10_000, "lat": lat, "lng": round(lng, 7), "speed": 0.0})
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--vehicles", type=int, default=50)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--append", type=Path)
    args = parser.parse_args()
    admin = os.environ.get("TEST_PG_URL", databases.DEFAULT_ADMIN_URL)
    url = await databases.create_database(admin, prefix="wh_bench")
    try:
        await migrator.migrate(url)
        db = await Database(url, AppRole.from_secret(SECRET), min_size=1, max_size=4).open()
        try:
            lines = await _measure(db, args)
        finally:
            await db.close()
    finally:
        await databases.drop_database(admin, url)
    text = "\n".join(lines)
    print(text)
    if args.append:
        with args.append.open("a") as f:
            f.write("\n" + text + "\n")


async def _measure(db: Database, args) -> list[str]:
    reps = args.reps
    async with db.operator("bench") as conn:
        cid = await conn.fetchval("INSERT INTO customers (slug, name) VALUES ('bench', 'bench') RETURNING id")
    async with db.tenant(cid) as conn:
        vehicles = [
            await conn.fetchval(
                "INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, $2, $2) RETURNING id",
                cid,
                f"v{i:03}",
            )
            for i in range(args.vehicles + 1)
        ]
    fleet, uploader = vehicles[:-1], vehicles[-1]
    today = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - dt.timedelta(days=args.days)
    await _populate(db, cid, fleet, start, args.days)
    owner = await asyncpg.connect(db.dsn)  # the owner: statistics as autovacuum would have them
    try:
        await owner.execute("ANALYZE trips; ANALYZE stops; ANALYZE fleet_events")
    finally:
        await owner.close()
    end = today

    async def fleet_summary():
        async with db.tenant(cid) as conn:
            rows = await store.summary(conn, cid, None, start, end, overspeed.OVERSPEED)
        assert len(rows) == len(vehicles)

    async def vehicle_summary():
        async with db.tenant(cid) as conn:
            await store.summary(conn, cid, fleet[0], start, end, overspeed.OVERSPEED)

    async def trips_all(page=store.trips_page):
        after, n = None, 0
        while True:
            async with db.tenant(cid) as conn:
                rows = await page(conn, cid, None, start, end, after, 1000)
            n += len(rows)
            if len(rows) < 1000:
                return n
            after = (rows[-1]["start_time"], rows[-1]["vehicle_id"])

    async def stops_all():
        return await trips_all(store.stops_page)

    async def trips_first_page():
        async with db.tenant(cid) as conn:
            await store.trips_page(conn, cid, None, start, end, None, 100)

    trips_n = await trips_all()
    results = {
        "fleet summary, 30 d x 50 vehicles (ms)": await _median(fleet_summary, reps),
        "one vehicle's summary, 30 d (ms)": await _median(vehicle_summary, reps),
        "trips: first page of 100, fleet (ms)": await _median(trips_first_page, reps),
        f"trips: all {trips_n:,} rows, pages of 1000 (ms)": await _median(trips_all, reps),
        "stops: all rows, pages of 1000 (ms)": await _median(stops_all, reps),
    }
    # reference: one vehicle-day's summary from raw positions
    registry = DatabaseRegistry(db)
    await registry.reload()
    pipeline = Pipeline(registry)
    day_start = today - dt.timedelta(days=2)
    fixes = _day_of_fixes(int(day_start.timestamp() * 1000))
    now = day_start + dt.timedelta(days=1, minutes=5)
    late_hour = set(range(4000, 4360))  # an hour in the middle arrives late
    started = time.perf_counter()
    await pipeline.process(
        Batch(str(cid), uploader, [f for i, f in enumerate(fixes) if i not in late_hour], source="osmand"), now=now
    )
    upload_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    backfill = await pipeline.process(
        Batch(str(cid), uploader, [fixes[i] for i in sorted(late_hour)], source="osmand"), now=now
    )
    backfill_ms = (time.perf_counter() - started) * 1000

    async def raw_day():
        async with db.tenant(cid) as conn:
            rows = await position_store.page(
                conn, cid, uploader, day_start, day_start + dt.timedelta(days=1), None, 10_000
            )
        await asyncio.to_thread(path_length, [(r["lat"], r["lng"]) for r in rows])

    raw_ms = await _median(raw_day, reps)
    th = Thresholds()
    ms = [f["t"] for f in fixes]
    lat = [f["lat"] for f in fixes]
    lng = [f["lng"] for f in fixes]
    speed = [f["speed"] for f in fixes]
    started = time.perf_counter()
    analysis.analyze(analysis.initial(), ms, lat, lng, speed, None, th, fleet_events.RULES)
    analyze_us = (time.perf_counter() - started) * 1e6 / len(ms)
    load = os.getloadavg()
    ours = results["fleet summary, 30 d x 50 vehicles (ms)"]
    lines = [
        f"## Fleet reports from rows (bench/reports.py, {dt.datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores (shared with"
        " other work). Medians of "
        f"{reps} runs; rows generated for {args.days} days x {args.vehicles} vehicles (12 trips + 12 stops a vehicle-day).",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:,.1f} |" for k, v in results.items()],
        f"| reference: ONE vehicle-day's summary from raw positions (8,640 fixes) (ms) | {raw_ms:,.1f} |",
        f"| ratio: fleet summary over {args.days * args.vehicles:,} vehicle-days / one raw vehicle-day | "
        f"{ours / raw_ms:.2f} |",
        f"| pipeline: day upload of 8,640 fixes (7,920, an hour held back), whole batch (ms) | {upload_ms:,.0f} |",
        f"| pipeline: the late hour (360 fixes) backfilled into it, whole batch (ms) | {backfill_ms:,.0f} "
        f"(retracted {len(backfill.fleet.retracted)}, added {len(backfill.fleet.added)}) |",
        f"| analysis CPU per fix, pure Python (us) | {analyze_us:.1f} |",
    ]
    return lines


if __name__ == "__main__":
    asyncio.run(main())
