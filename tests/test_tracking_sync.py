"""Track documents written by the real JS client (yjs + y-websocket) become rows exactly once,
across a server killed mid-materialization; the fleet document's live map follows the vehicle."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal

import asyncpg
import numpy as np
import pycrdt
import pytest

from storage import positions as position_store
from sync_server.domain.tracking.geofences import Circle, GeofenceSet, transitions

from .conftest import TEST_SECRET
from .support import fleet, sync_peers
from .support.server import ServerProcess

UTC = dt.UTC
POINTS = 10_000
DAY = dt.datetime.now(UTC).date() - dt.timedelta(days=1)
START_MS = int(dt.datetime(DAY.year, DAY.month, DAY.day, 8, tzinfo=UTC).timestamp() * 1000)


def fix(i: int) -> tuple[int, float, float]:
    """The route of client-examples/js/tracker.mjs: back and forth along lat 52.5, 1000 fixes a leg."""
    leg = i % 2000
    step = leg if leg < 1000 else 2000 - leg
    return START_MS + i * 1000, 52.5, 13.4 + step * 0.00002


async def _setup(db):
    slug = f"fleet-{START_MS % 997}-{id(db) % 10000}"
    cid = await fleet.customer(db, slug)
    vid = await fleet.vehicle(db, cid, "van-7")
    gid = await fleet.circle(db, cid, "depot", 52.5, 13.41, 200)
    ms, lat, lng = (np.array(column) for column in zip(*(fix(i) for i in range(POINTS))))
    expected = transitions(GeofenceSet([Circle(gid, 52.5, 13.41, 200)]), frozenset(), ms, lat, lng)
    return sync_peers.Customer(str(cid), slug), vid, expected


def _tracker(server, customer, vid, points: int) -> dict:
    return sync_peers.tracker(
        server.ws_url, TEST_SECRET, customer, vid, DAY.isoformat(), "--points", str(points), "--start-ms", str(START_MS)
    )


async def _wait_for(check, what: str, timeout: float = 120.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _state(db, cid):
    rows = await fleet.count(db, cid, "SELECT count(*) FROM gps_positions")
    progress = await fleet.count(db, cid, "SELECT coalesce(max(elements), 0) FROM track_progress")
    return rows, progress


async def _assert_exactly_once(db, customer, vid, expected):
    cid = customer.id
    assert await fleet.count(db, cid, "SELECT count(*) FROM gps_positions") == POINTS
    assert await fleet.count(db, cid, "SELECT count(DISTINCT time) FROM gps_positions") == POINTS
    events = await fleet.rows(db, cid, "SELECT event, time FROM geofence_events ORDER BY time")
    assert [(r["event"], r["time"]) for r in events] == [
        (e.event, dt.datetime.fromtimestamp(e.ms / 1000, UTC)) for e in expected
    ]
    assert len(expected) == 20  # the route enters and leaves the depot on each of its 10 legs
    assert await fleet.usage(db, cid) == {"gps_points": POINTS}  # nothing counted twice, nothing rejected


@pytest.mark.parametrize("readers", ["2", "0"], ids=["helper-processes", "event-loop"])
async def test_offline_client_10k_points_reconnect_exactly_10k_rows(db, server_env, database_url, tmp_path, readers):
    """With the track reader's helper processes (the default) and on the event loop (TRACKING_READERS=0)."""
    customer, vid, expected = await _setup(db)
    server = ServerProcess({**server_env, "TRACKING_READERS": readers}, log_path=tmp_path / "server.log").start()
    try:
        result = await asyncio.to_thread(_tracker, server, customer, vid, POINTS)
        assert result == {"before": 0, "points": POINTS}
        await _wait_for(lambda: _done(db, customer.id), "10,000 rows and progress")
        await _assert_exactly_once(db, customer, vid, expected)
        # a helper starts with its first room: one room, one helper (none on the event loop)
        assert len(server.children()) == (0 if readers == "0" else 1)
    finally:
        server.stop()
    # the fleet document's live map holds the vehicle's latest fix, persisted like any update
    stored = await sync_peers.stored_doc(database_url, customer, "fleet")
    live = stored.get("live", type=pycrdt.Map)
    # ... and its event feed each geofence event, once, in time order (tracking.event_feed; the
    # fleet events of tracking.fleet_events, trips and stops, are in it too: tested there)
    feed = [e for e in stored.get("events", type=pycrdt.Array).to_py() if e["type"].startswith("geofence_")]
    assert [(e["type"], e["t"], e["vehicle_id"]) for e in feed] == [
        (f"geofence_{e.event}", e.ms, str(vid)) for e in expected
    ]
    assert live[str(vid)]["t"] == dt.datetime.fromtimestamp(fix(POINTS - 1)[0] / 1000, UTC).isoformat().replace(
        "+00:00", "Z"
    )
    latest = await fleet.rows(db, customer.id, "SELECT time FROM vehicle_positions_latest")
    assert latest[0]["time"] == dt.datetime.fromtimestamp(fix(POINTS - 1)[0] / 1000, UTC)


async def _done(db, cid):
    rows, progress = await _state(db, cid)
    return rows == POINTS and progress == POINTS


@pytest.mark.timeout(300)
async def test_server_killed_mid_materialization_resumes_exactly_once(db, server_env, database_url, tmp_path):
    customer, vid, expected = await _setup(db)
    env = {**server_env, "TRACKING_BATCH_POINTS": "200", "TRACKING_FLUSH_SECONDS": "0"}
    # Hold the vehicle's track lock, let exactly one batch through, hold it again, then kill -9: the
    # server is stopped mid-materialization however fast it runs.
    holder, key = await _hold_track_lock(database_url, customer, vid)
    first = ServerProcess(env, log_path=tmp_path / "first.log").start()
    try:
        await asyncio.to_thread(_tracker, first, customer, vid, POINTS)
        doc = f"tracks/{vid}/{DAY.isoformat()}"
        await _wait_for(lambda: _logged(database_url, customer, doc), "the update in the log")
        await _wait_for(lambda: _awaited(holder), "a batch waiting for the track lock")
        # one statement: the waiting batch is granted the lock as it is released, and this session
        # queues for it again before that batch's successor can (it waits for its predecessor's commit)
        await holder.execute(
            "SELECT pg_advisory_unlock(hashtextextended($1, 0)), pg_advisory_lock(hashtextextended($1, 0))", key
        )
        first.stop(signal.SIGKILL)
    finally:
        first.stop(signal.SIGKILL)
        await holder.close()
    rows_at_kill, progress_at_kill = await _state(db, customer.id)
    assert rows_at_kill == 200 and progress_at_kill == rows_at_kill
    second = ServerProcess(env, log_path=tmp_path / "second.log").start()
    try:
        # the phone resyncs (nothing new to send): loading the room resumes materialization
        await asyncio.to_thread(_tracker, second, customer, vid, 0)
        await _wait_for(lambda: _done(db, customer.id), "10,000 rows after the restart")
        await _assert_exactly_once(db, customer, vid, expected)
    finally:
        second.stop()


@pytest.mark.timeout(300)
async def test_track_reader_killed_mid_upload_is_replaced_and_rows_stay_exactly_once(
    db, server_env, database_url, tmp_path
):
    """kill -9 of the helper process that decodes the room while the room's first batch is in the
    database: the server starts another, opens the room in it again from its state, and every
    point still becomes one row, every geofence event one event."""
    customer, vid, expected = await _setup(db)
    env = {**server_env, "TRACKING_BATCH_POINTS": "200", "TRACKING_FLUSH_SECONDS": "0", "TRACKING_READERS": "1"}
    holder, key = await _hold_track_lock(database_url, customer, vid)
    server = ServerProcess(env, log_path=tmp_path / "server.log").start()
    try:
        await asyncio.to_thread(_tracker, server, customer, vid, POINTS)
        await _wait_for(lambda: _awaited(holder), "a batch waiting for the track lock")
        [helper] = server.children()
        os.kill(helper, signal.SIGKILL)
        await _wait_for(lambda: _replaced(server, helper), "another helper")
        await holder.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)
        await _wait_for(lambda: _done(db, customer.id), "10,000 rows after the helper was replaced")
        await _assert_exactly_once(db, customer, vid, expected)
        assert '"track_reader_died"' in server.log_text()
    finally:
        server.stop()
        await holder.close()


async def _hold_track_lock(database_url, customer, vid) -> tuple[asyncpg.Connection, str]:
    """A session holding the vehicle's track lock, the one every batch takes first: batches wait."""
    holder = await asyncpg.connect(database_url)
    key = position_store.track_lock_key(customer.id, vid)
    await holder.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
    return holder, key


async def _replaced(server, helper: int) -> bool:
    children = server.children()
    return len(children) == 1 and children[0] != helper and server.log_text().count('"track_reader_started"') == 2


async def _logged(database_url, customer, doc):
    count, _, _ = await sync_peers.stored_updates(database_url, customer, doc)
    return count > 0


async def _awaited(conn) -> bool:
    """Another session waits for an advisory lock this connection holds."""
    return await conn.fetchval(
        "SELECT count(*) > 0 FROM pg_locks l JOIN pg_locks mine ON mine.pid = pg_backend_pid() "
        "AND mine.locktype = 'advisory' AND l.locktype = 'advisory' AND NOT l.granted "
        "AND (l.classid, l.objid) = (mine.classid, mine.objid)"
    )
