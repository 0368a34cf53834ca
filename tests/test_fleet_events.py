"""Fleet events, trips and stops (issue 17) through the real pipeline against real PostgreSQL: the
rules on hand-made tracks, and the property that arrival order, batch split and restarts never
change the outcome (everything equals one run over the fixes in time order)."""

from __future__ import annotations

import datetime as dt
import math
import os
import random

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from storage import DatabaseRegistry
from storage import fleet_events as store
from storage import webhooks as webhook_store
from sync_server.domain.tracking import analysis, fleet_events, motion
from sync_server.domain.tracking.pipeline import Batch, Pipeline
from sync_server.domain.tracking.thresholds import Thresholds

from .support import fleet

UTC = dt.UTC
NOW = dt.datetime.now(UTC).replace(microsecond=0)
START_MS = int((NOW - dt.timedelta(days=2)).timestamp() * 1000)
SETTINGS = {
    "min_stop_s": 120,
    "stop_radius_m": 80,
    "speed_limit_kmh": 60,
    "overspeed_min_s": 20,
    "offline_after_s": 900,
}
M_PER_DEG = 111_320.0


async def _pipeline(db) -> Pipeline:
    registry = DatabaseRegistry(db)
    await registry.reload()
    return Pipeline(registry)


async def _customer(db, settings=SETTINGS):
    cid = await fleet.customer(db)
    vid = await fleet.vehicle(db, cid)
    async with db.tenant(cid) as conn:
        await store.put_settings(conn, cid, settings)
    return cid, vid


async def _send(pipeline, cid, vid, fixes, now=NOW):
    return await pipeline.process(Batch(str(cid), vid, fixes, source="osmand"), now=now)


async def _outcome(db, cid) -> dict:
    """Everything the analysis stored for a customer, without ids."""
    async with db.tenant(cid) as conn:
        events = await conn.fetch(
            "SELECT type, time, lat, lng, data, decided_ms FROM fleet_events ORDER BY time, type, decided_ms"
        )
        trips = await conn.fetch(
            "SELECT start_time, end_time, start_lat, start_lng, end_lat, end_lng, distance_m, duration_s, max_speed, "
            "avg_speed, path FROM trips ORDER BY start_time"
        )
        stops = await conn.fetch(
            "SELECT start_time, end_time, lat, lng, duration_s, confirmed_ms, state FROM stops ORDER BY start_time"
        )
        state = await conn.fetch("SELECT last_ms, state, offline_ms FROM motion_state")
    return {
        "events": [tuple(r.values()) for r in events],
        "trips": [tuple(r.values()) for r in trips],
        "stops": [tuple(r.values()) for r in stops],
        "state": [tuple(r.values()) for r in state],
    }


def _track(legs) -> list[dict]:
    """Fixes from legs: ("drive", n, seconds between, km/h, heading deg, speed reported?),
    ("park", n, seconds between), ("gap", seconds)."""
    out, t, lat, lng = [], START_MS, 52.5, 13.4
    for leg in legs:
        if leg[0] == "gap":
            t += leg[1] * 1000
            continue
        if leg[0] == "park":
            _, n, every = leg
            for i in range(n):
                t += every * 1000
                # a few metres of GPS noise around the parking place
                out.append({"t": t, "lat": lat + ((i * 7) % 5 - 2) * 1e-5, "lng": lng, "speed": 0.0})
            continue
        _, n, every, kmh, heading, reported = leg
        step = kmh / 3.6 * every
        for _ in range(n):
            t += every * 1000
            lat += step * math.cos(math.radians(heading)) / M_PER_DEG
            lng += step * math.sin(math.radians(heading)) / (M_PER_DEG * math.cos(math.radians(lat)))
            fix = {"t": t, "lat": round(lat, 7), "lng": round(lng, 7)}
            if reported:
                fix["speed"] = kmh / 3.6
            out.append(fix)
    return out


async def test_a_day_of_driving_gives_trips_stops_overspeed_and_gaps(db):
    cid, vid = await _customer(db)
    pipeline = await _pipeline(db)
    fixes = _track(
        [
            ("park", 20, 30),  # 10 min parked: a stop from the first fix
            ("drive", 40, 15, 50, 90, True),  # 10 min at 50 km/h
            ("drive", 6, 10, 90, 90, True),  # 50 s at 90 km/h: overspeed (limit 60, 20 s minimum)
            ("drive", 10, 15, 40, 0, False),  # speed not reported: implied
            ("park", 12, 30),  # 6 min: a stop
            ("gap", 1800),  # 30 min without fixes: offline (900 s)
            ("park", 3, 30),
            ("drive", 20, 15, 30, 180, True),
        ]
    )
    await _send(pipeline, cid, vid, fixes)
    got = await _outcome(db, cid)
    types = [e[0] for e in got["events"]]
    assert types.count(motion.TRIP_STARTED) == 2 and types.count(motion.TRIP_ENDED) == 1
    assert types.count(motion.STOP_STARTED) == 2 and types.count(motion.STOP_ENDED) == 2
    over = [e for e in got["events"] if e[0] == "overspeed.started"]
    assert len(over) == 1 and over[0][4]["max_speed_kmh"] == 90.0 and over[0][4]["limit_kmh"] == 60.0
    offline = [e for e in got["events"] if e[0] == "device.offline"]
    online = [e for e in got["events"] if e[0] == "device.online"]
    # the gap in the fixes, and the open gap after the last fix (server time: two days later)
    assert [e[5] is None for e in offline] == [False, True] and len(online) == 1
    assert online[0][4]["offline_s"] == pytest.approx(1800 + 30 - 900)
    # trips and stops as rows: the first trip is closed, the last is still open
    assert len(got["trips"]) == 2 and got["trips"][0][1] is not None and got["trips"][1][1] is None
    first = got["trips"][0]
    expected_m = 40 * 50 / 3.6 * 15 + 6 * 90 / 3.6 * 10 + 10 * 40 / 3.6 * 15
    assert first[6] == pytest.approx(expected_m, rel=0.01)
    assert first[8] == pytest.approx(90 / 3.6, rel=1e-5)  # max speed, m/s
    assert first[9] == pytest.approx(first[6] / first[7])
    assert 3 <= len(first[10]) <= 60  # a simplified path
    assert len(got["stops"]) == 2 and all(s[1] is not None for s in got["stops"])


async def test_backfill_retracts_what_the_late_fixes_disprove(db):
    """Live, two fixes at the same place 3 minutes apart look like a stop. The fixes of those
    minutes arrive late and show a loop driven meanwhile: the stop and the trip's end are retracted
    (reported as such), the trip goes on, and everything equals the ordered run."""
    cid, vid = await _customer(db)
    async with db.tenant(cid) as conn:
        await webhook_store.insert_endpoint(
            conn, cid, url="https://example.com/hook", events=["trip.*", "stop.*"], description="", secret="whsec_AAAA"
        )
    pipeline = await _pipeline(db)
    there = _track([("drive", 20, 15, 40, 90, True)])
    at = there[-1] = dict(there[-1], speed=0.0)  # arrives, and stands still
    loop = [  # a 1 km loop out and back during the 3 minutes
        dict(at, t=at["t"] + k * 15_000, lat=at["lat"] + 0.004 * math.sin(math.pi * k / 12), speed=11.0)
        for k in range(1, 12)
    ]
    back = dict(at, t=at["t"] + 180_000, speed=0.0)
    after = [dict(back, t=back["t"] + k * 30_000) for k in range(1, 10)]  # then parked for good
    now = dt.datetime.fromtimestamp(after[-1]["t"] / 1000 + 60, UTC)
    await _send(pipeline, cid, vid, there, now)
    live = await _send(pipeline, cid, vid, [back], now)
    assert [r.type for r in live.fleet.added] == [motion.TRIP_ENDED, motion.STOP_STARTED]
    wrong_stop = live.fleet.added[1]
    late = await _send(pipeline, cid, vid, loop, now)
    assert {r.id for r in late.fleet.retracted} == {r.id for r in live.fleet.added}
    # the webhook outbox got each retraction after the event it retracts, ordered per vehicle
    async with db.tenant(cid) as conn:
        queued = await conn.fetch(
            "SELECT event_type AS type, ordering_key, dedupe_key FROM webhook_outbox ORDER BY seq"
        )
    types = [r["type"] for r in queued]
    assert types[:3] == [motion.TRIP_STARTED, motion.TRIP_ENDED, motion.STOP_STARTED]
    assert sorted(types[3:5]) == ["stop.started.retracted", "trip.ended.retracted"]
    assert {r["ordering_key"] for r in queued} == {str(vid)}
    assert {r["dedupe_key"] for r in queued[3:5]} == {f"fleet_event:{r.id}:retracted" for r in live.fleet.added}
    await _send(pipeline, cid, vid, after, now)
    got = await _outcome(db, cid)
    stops = [e for e in got["events"] if e[0] == motion.STOP_STARTED]
    assert len(stops) == 1 and stops[0][1] > wrong_stop_time(wrong_stop)
    reference, ref_vehicle = await _customer(db)
    await _send(pipeline, reference, ref_vehicle, there + loop + [back] + after, now)
    assert got == await _outcome(db, reference)


def wrong_stop_time(recorded) -> dt.datetime:
    return dt.datetime.fromtimestamp(recorded.ms / 1000, UTC)


# --- the property -----------------------------------------------------------------------------

legs = st.lists(
    st.one_of(
        st.tuples(
            st.just("drive"),
            st.integers(1, 25),
            st.sampled_from([5, 10, 30]),
            st.sampled_from([3, 20, 50, 75, 110]),
            st.integers(0, 359),
            st.booleans(),
        ),
        st.tuples(st.just("park"), st.integers(1, 12), st.sampled_from([20, 60, 200])),
        st.tuples(st.just("gap"), st.sampled_from([60, 600, 1500])),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=int(os.environ.get("FLEET_EVENTS_EXAMPLES", "40")),  # e.g. 300 for a long run
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(legs=legs, seed=st.integers(0, 2**32 - 1))
async def test_any_arrival_order_and_split_equals_the_ordered_run(db, legs, seed):
    fixes = _track(legs)
    if not fixes:
        return
    rng = random.Random(seed)
    reference, vehicle = await _customer(db)
    await _send(await _pipeline(db), reference, vehicle, fixes)
    expected = await _outcome(db, reference)

    cid, vid = await _customer(db)
    arrival = fixes[:]
    if rng.random() < 0.5:
        rng.shuffle(arrival)  # any order
    else:  # mostly in order with late chunks: a phone uploading offline spans after the live ones
        chunks, i = [], 0
        while i < len(arrival):
            n = rng.randint(1, 15)
            chunks.append(arrival[i : i + n])
            i += n
        rng.shuffle(chunks)
        arrival = [f for c in chunks for f in c]
    cuts = (
        sorted(rng.sample(range(1, len(arrival)), min(len(arrival) - 1, rng.randint(0, 8)))) if len(arrival) > 1 else []
    )
    batches = [arrival[a:b] for a, b in zip([0, *cuts], [*cuts, len(arrival)])]
    restart = rng.randrange(len(batches))
    note(f"batches (first, last fix index): {[(fixes.index(b[0]), fixes.index(b[-1]), len(b)) for b in batches]}")
    note(f"restart before batch {restart}; legs {legs}; fixes {fixes}")
    pipeline = await _pipeline(db)
    for i, batch in enumerate(batches):
        if i == restart:  # a node restart: a new pipeline (no caches), and the last batch sent again
            pipeline = await _pipeline(db)
            if i:
                await _send(pipeline, cid, vid, batches[i - 1])
        outcome = await _send(pipeline, cid, vid, batch)
        note(f"batch {i}: stored {outcome.stored}, rejected {outcome.rejected}")
    assert sorted(map(repr, arrival)) == sorted(map(repr, fixes))  # every fix is sent
    assert await _outcome(db, cid) == expected


def test_state_round_trips_through_json_exactly():
    state = analysis.initial()
    ms = [START_MS + i * 10_000 for i in range(50)]
    lat = [52.5 + i * 1e-4 / 3 for i in range(50)]
    lng = [13.4 + i * 2e-4 / 7 for i in range(50)]
    speed = [float("nan")] * 50
    th = Thresholds(min_stop_s=60)
    whole = analysis.analyze(analysis.initial(), ms, lat, lng, speed, None, th, fleet_events.RULES)
    first = analysis.analyze(state, ms[:17], lat[:17], lng[:17], speed[:17], None, th, fleet_events.RULES)
    resumed = analysis.loads(analysis.dumps(first.state))
    second = analysis.analyze(resumed, ms[17:], lat[17:], lng[17:], speed[17:], None, th, fleet_events.RULES)
    assert analysis.dumps(second.state) == analysis.dumps(whole.state)
    assert [e.key for e in first.output.events + second.output.events] == [e.key for e in whole.output.events]


async def test_offline_task_on_server_time_then_late_fixes_fill_the_gap(db):
    """The runtime task records device.offline on server time; fixes uploaded later from inside the
    gap retract it (the device was tracking all along), and the history equals the ordered run."""
    cid, vid = await _customer(db)
    pipeline = await _pipeline(db)
    fixes = _track([("drive", 80, 30, 20, 90, True)])  # 40 min, a fix every 30 s
    live, offline_span = fixes[:20], fixes[20:]
    last_live = live[-1]["t"]
    await _send(pipeline, cid, vid, live, now=dt.datetime.fromtimestamp(last_live / 1000 + 10, UTC))
    assert await fleet_events.offline_once(pipeline.registry, now_ms=last_live + 600_000) == 0  # not yet (900 s)
    assert await fleet_events.offline_once(pipeline.registry, now_ms=last_live + 901_000) == 1
    assert await fleet_events.offline_once(pipeline.registry, now_ms=last_live + 999_000) == 0  # once per gap
    got = await _outcome(db, cid)
    offline = [e for e in got["events"] if e[0] == "device.offline"]
    assert len(offline) == 1 and offline[0][5] is None
    assert offline[0][1] == dt.datetime.fromtimestamp((last_live + 900_000) / 1000, UTC)
    late = await _send(pipeline, cid, vid, offline_span, now=dt.datetime.fromtimestamp(fixes[-1]["t"] / 1000 + 60, UTC))
    assert [r.type for r in late.fleet.retracted] == ["device.offline"]
    got = await _outcome(db, cid)
    assert not [e for e in got["events"] if e[0].startswith("device.")]
    reference, ref_vehicle = await _customer(db)
    await _send(pipeline, reference, ref_vehicle, fixes, now=dt.datetime.fromtimestamp(fixes[-1]["t"] / 1000 + 60, UTC))
    assert got == await _outcome(db, reference)


async def test_quota_reached_once_per_day(db):
    plan = await fleet.plan(db, "tiny-h17e", points_per_day=5)
    cid = await fleet.customer(db, plan=plan)
    vid = await fleet.vehicle(db, cid)
    pipeline = await _pipeline(db)
    fixes = _track([("drive", 8, 30, 20, 90, True)])
    first = await _send(pipeline, cid, vid, fixes[:6])
    assert first.stored == 5 and [r.type for r in first.fleet.added if r.vehicle_id is None] == ["quota.reached"]
    again = await _send(pipeline, cid, vid, fixes[6:])
    assert again.stored == 0 and not [r for r in again.fleet.added if r.type == "quota.reached"]
    async with db.tenant(cid) as conn:
        rows = await conn.fetch("SELECT vehicle_id, data FROM fleet_events WHERE type = 'quota.reached'")
    assert len(rows) == 1 and rows[0]["vehicle_id"] is None and rows[0]["data"]["limit"] == 5


async def test_speed_limits_of_the_vehicle_and_of_zones_and_the_feed_entries(db):
    """The limit at a fix is the lowest of the customer's default, the vehicle's and those of
    speed-limited geofences holding it; the recorded events make valid fleet-feed entries."""
    cid, vid = await _customer(db)  # customer default: 60 km/h
    async with db.tenant(cid) as conn:
        await conn.execute("UPDATE vehicles SET metadata = '{\"speed_limit_kmh\": 80}' WHERE id = $1", vid)
    fixes = _track([("drive", 10, 10, 70, 90, True), ("drive", 10, 10, 50, 90, True), ("park", 8, 30)])
    # a 30 km/h zone around the 50 km/h stretch
    zone_lng = (fixes[12]["lng"] + fixes[17]["lng"]) / 2
    zone = await fleet.circle(db, cid, "school", 52.5, zone_lng, 400)
    async with db.tenant(cid) as conn:
        await conn.execute("UPDATE geofences SET metadata = '{\"speed_limit_kmh\": 30}' WHERE id = $1", zone)
    outcome = await _send(await _pipeline(db), cid, vid, fixes)
    over = [e for e in outcome.fleet.added if e.type == "overspeed.started"]
    # 70 km/h under the vehicle's 80 is fine (its limit replaces the customer's 60); 50 in the zone is not
    assert len(over) == 1 and over[0].data["limit_kmh"] == 30.0 and over[0].data["max_speed_kmh"] == 50.0
    entries = [e.as_json() for e in outcome.fleet.feed_entries()]
    assert {e["type"] for e in entries} >= {"overspeed.started", "trip.started", "trip.ended", "stop.started"}
    assert all(e["id"].startswith("fleet:") and e["vehicle_id"] == str(vid) for e in entries)
