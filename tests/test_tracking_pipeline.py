"""The tracking pipeline against real PostgreSQL: filters, quota, geofences, exactly-once."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from storage import DatabaseRegistry
from sync_server.domain.tracking.pipeline import Batch, Pipeline
from sync_server.domain.tracking.points import decode_chunk

from .support import fleet

UTC = dt.UTC
TODAY = dt.datetime.now(UTC).date()
NOON = dt.datetime(TODAY.year, TODAY.month, TODAY.day, 12, tzinfo=UTC)
NOON_MS = int(NOON.timestamp() * 1000)
NOW = NOON + dt.timedelta(hours=1)  # the server clock the tests run the pipeline at


def pt(seconds: float, lat: float, lng: float, **extra) -> dict:
    """A track-document point `seconds` after noon today (epoch ms, as JS clients write)."""
    return {"t": NOON_MS + int(seconds * 1000), "lat": lat, "lng": lng, **extra}


@pytest.fixture
async def pipeline(db):
    registry = DatabaseRegistry(db)
    await registry.reload()
    return Pipeline(registry)


async def run(pipeline, cid, vid, raw, *, doc=None, first_index=0, day=TODAY, source="doc"):
    doc = doc if doc is not None else (f"tracks/{vid}/{day}" if source == "doc" else None)
    batch = Batch(
        str(cid), vid, raw, source=source, doc=doc, day=day if source == "doc" else None, first_index=first_index
    )
    return await pipeline.process(batch, now=NOW)


async def test_every_filter_reason_is_counted_never_lost(db, pipeline):
    cid = await fleet.customer(db)
    vid = await fleet.vehicle(db, cid)
    raw = [
        pt(0, 52.5, 13.4, speed=3.0, heading=90, accuracy=5, alt=40),  # good
        {"lat": 52.5, "lng": 13.4},  # malformed: no t
        {"t": "yesterday", "lat": 52.5, "lng": 13.4},  # malformed: t unreadable
        pt(1, "52.5", 13.4),  # malformed: lat not a number
        pt(2, 91.0, 13.4),  # out_of_range
        pt(3, 52.5, 181.0),  # out_of_range
        pt(4, 0.0, 0.0),  # null_island
        pt(2 * 3600, 52.5, 13.4),  # future (an hour after the server clock)
        pt(-13 * 3600 - 1, 52.5, 13.4),  # outside_day: before today's window (00:00 - 1 h slack)
        pt(10, 52.5, 13.4, accuracy=5000),  # inaccurate
        pt(0, 52.5001, 13.4001),  # duplicate: same vehicle and time as the first
        pt(20, 52.6, 13.4),  # jump: 11 km in 20 s from the first (~2000 km/h)
        pt(30, 52.5002, 13.4002),  # good (30 s after the first, a few metres away)
        {"t": NOON.isoformat(), "lat": 1, "lng": 1, "speed": True},  # malformed: speed not a number
    ]
    outcome = await run(pipeline, cid, vid, raw)
    assert outcome.stored == 2
    assert outcome.rejected == {
        "malformed": 4,
        "out_of_range": 2,
        "null_island": 1,
        "future": 1,
        "outside_day": 1,
        "inaccurate": 1,
        "duplicate": 1,
        "jump": 1,
    }
    assert await fleet.count(db, cid, "SELECT count(*) FROM gps_positions") == 2
    usage = await fleet.usage(db, cid)
    assert usage["gps_points"] == 2
    for reason, n in outcome.rejected.items():
        assert usage[f"gps_points_rejected.{reason}"] == n
    # too_old applies to tracker input (no document day): older than the plan's retention (hobby: 30 days)
    old = {"t": NOON_MS - 40 * 86_400_000, "lat": 52.5, "lng": 13.4}
    outcome = await run(pipeline, cid, vid, [old], source="osmand")
    assert outcome.rejected == {"too_old": 1} and outcome.stored == 0
    row = await fleet.rows(db, cid, "SELECT * FROM gps_positions ORDER BY time LIMIT 1")
    assert (row[0]["speed"], row[0]["heading"], row[0]["accuracy"], row[0]["altitude"], row[0]["source"]) == (
        3.0,
        90.0,
        5.0,
        40.0,
        "doc",
    )


async def test_iso_and_epoch_times_and_latest_position(db, pipeline):
    cid = await fleet.customer(db)
    vid = await fleet.vehicle(db, cid)
    raw = [
        {"t": (NOON + dt.timedelta(seconds=5)).isoformat().replace("+00:00", "Z"), "lat": 52.5, "lng": 13.4},
        {"t": (NOON + dt.timedelta(seconds=65)).replace(tzinfo=None).isoformat(), "lat": 52.501, "lng": 13.4},
        pt(35.5, 52.5005, 13.4),
    ]
    outcome = await run(pipeline, cid, vid, raw)
    assert outcome.stored == 3 and outcome.latest is not None
    times = [r["time"] for r in await fleet.rows(db, cid, "SELECT time FROM gps_positions ORDER BY time")]
    assert times == [NOON + dt.timedelta(seconds=s) for s in (5, 35.5, 65)]
    latest = (await fleet.rows(db, cid, "SELECT * FROM vehicle_positions_latest"))[0]
    assert latest["time"] == NOON + dt.timedelta(seconds=65) and latest["lat"] == 52.501
    # an older (backfilled) fix never moves the latest position back
    outcome = await run(pipeline, cid, vid, [pt(1, 52.5, 13.4)], first_index=3)
    assert outcome.stored == 1 and outcome.latest is None
    latest = (await fleet.rows(db, cid, "SELECT * FROM vehicle_positions_latest"))[0]
    assert latest["time"] == NOON + dt.timedelta(seconds=65)


def route(n: int = 21) -> list[dict]:
    """Eastwards along lat 52.5 from lng 13.40 to 13.50, one fix per 30 s (~340 m apart)."""
    return [pt(i * 30, 52.5, 13.40 + i * 0.005) for i in range(n)]


async def _fences(db, cid):
    # circle of 500 m around lng 13.42 (fixes at 13.415, 13.42, 13.425 are inside: 340 m apart)
    circle = await fleet.circle(db, cid, "depot", 52.5, 13.42, 500)
    # polygon from lng 13.4525 to 13.4775 (fixes 13.455 .. 13.475 inside)
    polygon = await fleet.polygon(
        db, cid, "yard", [(52.49, 13.4525), (52.49, 13.4775), (52.51, 13.4775), (52.51, 13.4525)]
    )
    return circle, polygon


async def _events(db, cid):
    rows = await fleet.rows(db, cid, "SELECT geofence_id, event, time FROM geofence_events ORDER BY time, event")
    return [(r["geofence_id"], r["event"], r["time"]) for r in rows]


def at(i: int) -> dt.datetime:
    return NOON + dt.timedelta(seconds=30 * i)


async def test_circle_and_polygon_enter_exit_on_a_known_route(db, pipeline):
    cid = await fleet.customer(db)
    vid = await fleet.vehicle(db, cid)
    circle, polygon = await _fences(db, cid)
    outcome = await run(pipeline, cid, vid, route())
    assert outcome.stored == 21
    assert await _events(db, cid) == [
        (circle, "enter", at(3)),
        (circle, "exit", at(6)),
        (polygon, "enter", at(11)),
        (polygon, "exit", at(16)),
    ]


async def test_deleting_a_geofence_or_a_vehicle_deletes_its_events(db, pipeline):
    """The events' cascade (statement triggers since events carry no foreign keys), scoped to its
    customer: another customer's events stay."""
    cid, other = await fleet.customer(db), await fleet.customer(db)
    vid, other_vid = await fleet.vehicle(db, cid), await fleet.vehicle(db, other)
    circle, polygon = await _fences(db, cid)
    await _fences(db, other)
    await run(pipeline, cid, vid, route())
    await run(pipeline, other, other_vid, route())
    async with db.tenant(cid) as conn:
        await conn.execute("DELETE FROM geofences WHERE id = $1", circle)
    assert [(g, e) for g, e, _ in await _events(db, cid)] == [(polygon, "enter"), (polygon, "exit")]
    async with db.tenant(cid) as conn:
        await conn.execute("DELETE FROM vehicles WHERE id = $1", vid)
    assert await _events(db, cid) == []
    assert len(await _events(db, other)) == 4


async def test_a_geofence_deleted_while_a_batch_writes_its_events_takes_them_along(db, pipeline):
    """What the foreign keys guaranteed, held by the batch's one lock statement: a geofence whose
    delete is in progress makes the batch wait for it and then write no events of it; a delete that
    comes after the batch locked waits for the batch, and its trigger removes the batch's events."""
    cid = await fleet.customer(db)
    vid = await fleet.vehicle(db, cid)
    circle, polygon = await _fences(db, cid)
    await pipeline.limits(str(cid))  # cached: the batch's only waits are the ones under test
    async with db.tenant(cid) as deleting:
        await deleting.execute("DELETE FROM geofences WHERE id = $1", circle)
        batch = asyncio.ensure_future(run(pipeline, cid, vid, route()))
        await _until(lambda: _waiting_for(db, deleting), "the batch waiting for the delete")
        assert not batch.done()
    outcome = await batch  # the delete committed: the batch went on without the circle
    assert outcome.stored == 21
    assert [(g, e) for g, e, _ in await _events(db, cid)] == [(polygon, "enter"), (polygon, "exit")]

    vid2 = await fleet.vehicle(db, cid, "truck-2")
    async with db.tenant(cid) as holding:  # a batch's transaction holding its locks (as lock_parents takes them)
        from storage import geofence_events as event_store

        assert await event_store.lock_parents(holding, cid, vid2, [polygon]) == {polygon}
        deleting = asyncio.ensure_future(
            fleet.count(
                db, cid, "WITH d AS (DELETE FROM geofences WHERE id = $1 RETURNING 1) SELECT count(*) FROM d", polygon
            )
        )
        await _until(lambda: _waiting_for(db, holding), "the delete waiting for the batch")
        await holding.execute(
            "INSERT INTO geofence_events (customer_id, vehicle_id, geofence_id, event, time, lat, lng) "
            "VALUES ($1, $2, $3, 'enter', now(), 52.5, 13.46)",
            cid,
            vid2,
            polygon,
        )
    assert await deleting == 1
    assert await _events(db, cid) == []  # the trigger saw the batch's committed event


async def _until(check, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _waiting_for(db, conn) -> bool:
    """Another session waits for a lock `conn`'s transaction holds."""
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    async with db.operator("test_lock_wait") as op:
        return await op.fetchval("SELECT count(*) > 0 FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid)


async def test_circle_rim_is_decided_by_geodesic_distance(db, pipeline):
    from sync_server.domain.tracking.distance import geodesic
    from sync_server.domain.tracking.geofences import Circle

    c = Circle("c", 52.5, 13.42, 500)
    # points a few centimetres either side of the rim due east: haversine alone would misjudge some
    for lng in (13.4273, 13.4274, 13.42738, 13.42739, 13.4274):
        assert c.contains(52.5, lng) == (geodesic(52.5, 13.42, 52.5, lng) <= 500)


async def test_backfilled_span_gives_the_right_events_in_the_right_order(db, pipeline):
    full = route()
    # reference: the whole route in order, for another customer with the same fences
    ref_cid = await fleet.customer(db)
    ref_vid = await fleet.vehicle(db, ref_cid)
    ref_fences = await _fences(db, ref_cid)
    await run(pipeline, ref_cid, ref_vid, full)
    names = dict(zip(ref_fences, ("circle", "polygon")))
    expected = [(names[g], e, t) for g, e, t in await _events(db, ref_cid)]

    cid = await fleet.customer(db)
    vid = await fleet.vehicle(db, cid)
    fences = await _fences(db, cid)
    names = dict(zip(fences, ("circle", "polygon")))
    # live points first: 0-1 and 8-20 (the vehicle "jumps" from outside to past the circle)
    live = full[:2] + full[8:]
    await run(pipeline, cid, vid, live, source="osmand")
    got = [(names[g], e, t) for g, e, t in await _events(db, cid)]
    assert ("circle", "enter", at(3)) not in got
    # the device comes back online and uploads 2-7 (older than its last evaluated fix)
    outcome = await run(pipeline, cid, vid, full[2:8], source="osmand")
    assert outcome.stored == 6
    got = [(names[g], e, t) for g, e, t in await _events(db, cid)]
    assert got == expected
    assert [(e.event, e.ms) for e in outcome.events] == [("enter", NOON_MS + 90_000), ("exit", NOON_MS + 180_000)]


async def test_backfill_moves_an_event_recorded_too_late(db, pipeline):
    cid = await fleet.customer(db)
    vid = await fleet.vehicle(db, cid)
    circle = await fleet.circle(db, cid, "depot", 52.5, 13.42, 500)
    outside, inside = (52.5, 13.40), (52.5, 13.42)
    await run(pipeline, cid, vid, [pt(0, *outside), pt(120, *inside)], source="osmand")
    assert await _events(db, cid) == [(circle, "enter", NOON + dt.timedelta(seconds=120))]
    # a fix between them, already inside: the vehicle entered earlier than recorded
    await run(pipeline, cid, vid, [pt(60, 52.5, 13.418)], source="osmand")
    assert await _events(db, cid) == [(circle, "enter", NOON + dt.timedelta(seconds=60))]
    # replaying everything changes nothing
    await run(pipeline, cid, vid, [pt(0, *outside), pt(60, 52.5, 13.418), pt(120, *inside)], source="osmand")
    assert await _events(db, cid) == [(circle, "enter", NOON + dt.timedelta(seconds=60))]


async def test_quota_cut_off_per_day_of_the_fix(db, pipeline):
    await fleet.plan(db, "tiny", points_per_day=5)
    cid = await fleet.customer(db, plan="tiny")
    vid = await fleet.vehicle(db, cid)
    outcome = await run(pipeline, cid, vid, [pt(i * 10, 52.5, 13.4 + i * 1e-4) for i in range(8)])
    assert outcome.stored == 5 and outcome.rejected == {"quota_exceeded": 3}
    times = [r["time"] for r in await fleet.rows(db, cid, "SELECT time FROM gps_positions ORDER BY time")]
    assert times == [NOON + dt.timedelta(seconds=i * 10) for i in range(5)]  # the earliest fixes are kept
    outcome = await run(pipeline, cid, vid, [pt(100 + i, 52.5, 13.4) for i in range(2)], first_index=8)
    assert outcome.stored == 0 and outcome.rejected == {"quota_exceeded": 2}
    # yesterday has its own allowance
    yesterday = TODAY - dt.timedelta(days=1)
    raw = [{"t": NOON_MS - 86_400_000 + i * 1000, "lat": 52.5, "lng": 13.4} for i in range(7)]
    outcome = await run(pipeline, cid, vid, raw, day=yesterday)
    assert outcome.stored == 5 and outcome.rejected == {"quota_exceeded": 2}
    usage = await fleet.usage(db, cid)
    assert usage["gps_points"] == 10 and usage["gps_points_rejected.quota_exceeded"] == 7


async def test_document_batches_materialize_exactly_once(db, pipeline):
    cid = await fleet.customer(db)
    vid = await fleet.vehicle(db, cid)
    await _fences(db, cid)
    full = route() + [{"bad": 1}]
    first = await run(pipeline, cid, vid, full[:10])
    assert first.stored == 10
    # a replay overlapping what is durable (restart, resync, a second node): only the new part counts
    second = await run(pipeline, cid, vid, full[5:], first_index=5)
    assert second.skipped == 5 and second.stored == 11 and second.rejected == {"malformed": 1}
    third = await run(pipeline, cid, vid, full)
    assert third.skipped == len(full) and third.stored == 0 and third.rejected == {} and third.events == []
    assert await fleet.count(db, cid, "SELECT count(*) FROM gps_positions") == 21
    assert await fleet.count(db, cid, "SELECT count(*) FROM geofence_events") == 4
    assert await fleet.count(db, cid, "SELECT elements FROM track_progress") == len(full)
    usage = await fleet.usage(db, cid)
    assert usage == {"gps_points": 21, "gps_points_rejected.malformed": 1}


async def test_circle_containment_matches_the_geodesic_everywhere():
    import math
    import random

    from sync_server.domain.tracking.distance import geodesic
    from sync_server.domain.tracking.geofences import Circle

    rng = random.Random(7)
    for _ in range(300):
        lat, lng = rng.uniform(-75, 75), rng.uniform(-179, 179)
        radius = rng.choice([50, 500, 5_000, 9_999, 30_000])
        c = Circle("c", lat, lng, radius)
        for _ in range(20):
            # probe around the rim, where approximations go wrong
            bearing = rng.uniform(0, 2 * math.pi)
            scale = radius * rng.uniform(0.995, 1.005) / 111_000
            plat = lat + scale * math.cos(bearing)
            plng = lng + scale * math.sin(bearing) / math.cos(math.radians(lat))
            assert c.contains(plat, plng) == (geodesic(lat, lng, plat, plng) <= radius)


async def test_vehicles_of_one_customer_materialize_in_parallel_and_the_quota_stays_exact(db, pipeline):
    """Three vehicles' batches each fit the day's allowance but not all together. They store their
    rows in parallel (each under its own track lock) and meet only at the quota lock: hold that lock
    until all three wait on it, then release. The third to count finds the room gone, rolls back
    to before `quota` and is cut exactly."""
    from storage import usage as usage_store

    await fleet.plan(db, "hundred", points_per_day=100)
    cid = await fleet.customer(db, plan="hundred")
    vids = [await fleet.vehicle(db, cid, f"truck-{i}") for i in range(3)]
    async with db.tenant(cid) as holder:
        await usage_store.lock_quota(holder, cid, "gps_points_per_day")
        batches = [
            asyncio.ensure_future(run(pipeline, cid, vid, [pt(i * 10, 52.5, 13.4 + i * 1e-4) for i in range(45)]))
            for vid in vids
        ]
        for _ in range(500):
            waiting = await holder.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            if waiting == 3:
                break
            await asyncio.sleep(0.02)
        assert waiting == 3  # all three did their rows first and now wait only to count:
        writers = await holder.fetchval(
            "SELECT count(DISTINCT pid) FROM pg_locks WHERE mode = 'RowExclusiveLock' "
            "AND relation = 'gps_positions'::regclass"
        )
        assert writers == 3
        assert not any(b.done() for b in batches)
    outcomes = await asyncio.gather(*batches)
    assert sorted(o.stored for o in outcomes) == [10, 45, 45]
    assert sorted(o.rejected.get("quota_exceeded", 0) for o in outcomes) == [0, 0, 35]
    assert await fleet.count(db, cid, "SELECT count(*) FROM gps_positions") == 100
    usage = await fleet.usage(db, cid)
    assert usage["gps_points"] == 100 and usage["gps_points_rejected.quota_exceeded"] == 35
    # the cut one kept its earliest fixes, like any quota cut
    short = vids[[o.stored for o in outcomes].index(10)]
    times = [
        r["time"]
        for r in await fleet.rows(db, cid, "SELECT time FROM gps_positions WHERE vehicle_id = $1 ORDER BY time", short)
    ]
    assert times == [NOON + dt.timedelta(seconds=i * 10) for i in range(10)]


async def test_materializer_worker_outlives_a_failed_prepare(db, pipeline):
    """The plan lookup before a batch fails once (the database away for a moment): the room's worker
    logs it, waits, retries, and every point still becomes a row, once."""
    from types import SimpleNamespace

    from sync_server.domain.tracking import materializer as mat

    cid = await fleet.customer(db)
    vid = await fleet.vehicle(db, cid)
    worker = mat.TrackMaterializer(pipeline, pipeline.registry, flush_seconds=0, batch_points=4)
    room = SimpleNamespace(customer_id=str(cid), doc=f"tracks/{vid}/{TODAY}", name=f"{cid}/tracks/{vid}/{TODAY}")
    state = mat.TrackRoom(room, vid, TODAY, 0)
    real_limits, failures = pipeline.limits, []

    async def limits_failing_once(customer_id):
        if not failures:
            failures.append(customer_id)
            raise ConnectionError("database unavailable")
        return await real_limits(customer_id)

    pipeline.limits = limits_failing_once
    mat.MAX_BACKOFF, backoff = 0.05, mat.MAX_BACKOFF
    now_ms = int(dt.datetime.now(UTC).timestamp() * 1000)  # the worker runs at the real clock
    state.receive(
        decode_chunk([{"t": now_ms - 600_000 + i * 10_000, "lat": 52.5, "lng": 13.4 + i * 1e-4} for i in range(10)], 0)
    )
    task = asyncio.ensure_future(worker._work(state))
    try:
        await asyncio.wait_for(state.idle.wait(), 30)
    finally:
        task.cancel()
        mat.MAX_BACKOFF = backoff
    assert failures == [str(cid)]  # it did fail, and the worker went on
    assert state.done == 10 and state.backlog == 0 and state.queue.chunks == []
    assert await fleet.count(db, cid, "SELECT count(*) FROM gps_positions") == 10
    assert await fleet.count(db, cid, "SELECT elements FROM track_progress") == 10
