"""Issue 17: a JS tracker uploading a day offline produces the same webhooks as one that was online
all day. Two vehicles of one customer record the same fixes through the real JS track-document client
(client-examples/js/tracker.mjs) against a real `webhost-sync serve`: vehicle A online (each fix
sent as it is recorded, in several batches), vehicle B offline (all fixes recorded locally, then one
connect). The webhooks a real local receiver gets, verified with the standardwebhooks library, are
the same multiset of (type, data) once vehicle ids, event ids and delivery ids/times are set aside.

The fixes end a minute before the server clock and the customer's offline_after_s (1 h) spans the
whole sequence: an online vehicle's fixes are recent when they arrive. (Replaying hours-old fixes in
batches would make the server see each batch's end as an open gap, announce device.offline and
retract it with the next batch: correct for a vehicle that was really silent, not an online one.)"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import time

import pytest

from storage import AppRole, Database
from storage import fleet_events as fleet_store
from storage import webhooks as webhook_store
from sync_server.domain.webhooks.endpoints import generate_secret

from .conftest import TEST_SECRET
from .support import fleet, sync_peers
from .support.server import ServerProcess
from .support.webhook_receiver import Receiver
from .test_fleet_events import SETTINGS, _track
from .test_webhooks_delivery import _status_counts, _until
from .test_webhooks_nodes import NODE_ENV

pytestmark = [pytest.mark.js, pytest.mark.slow]

EVENTS = ["trip.*", "stop.*", "overspeed.*", "geofence.*", "device.*"]
BATCHES = 5


def _day() -> list[dict]:
    """About 40 minutes of a van's day: parked, a drive with an overspeed, a stop, a drive through
    a geofence, parked; ending a minute ago (fix times in ms, as the JS client records them)."""
    fixes = _track(
        [
            ("park", 20, 20),
            ("drive", 60, 10, 50, 90, True),
            ("drive", 8, 5, 90, 90, True),  # 40 s at 90 km/h: over the 60 km/h limit for 20 s+
            ("drive", 30, 10, 40, 0, True),
            ("park", 20, 20),  # ~7 min: a stop (min_stop_s 120)
            ("drive", 40, 10, 30, 180, True),
            ("park", 20, 20),
        ]
    )
    shift = int(time.time() * 1000) - 60_000 - fixes[-1]["t"]
    return [dict(f, t=f["t"] + shift, heading=0, accuracy=5) for f in fixes]


def _tracker(server, customer, vid, day: str, path, *mode: str) -> dict:
    return sync_peers.tracker(server.ws_url, TEST_SECRET, customer, vid, day, "--fixes", str(path), *mode)


def _normalised(received, secret, vehicles) -> dict[str, collections.Counter]:
    """Per vehicle: the multiset of (type, data without vehicle and event ids)."""
    out: dict[str, collections.Counter] = {str(v): collections.Counter() for v in vehicles}
    for r in received:
        payload = r.verified(secret)
        data = dict(payload["data"])
        vehicle = data.pop("vehicle_id")
        data.pop("event_id")
        out[vehicle][(payload["type"], json.dumps(data, sort_keys=True))] += 1
    return out


def _batches(log) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        if '"tracking_batch"' in line:
            entry = json.loads(line)
            out.setdefault(entry["vehicle_id"], []).append(entry["points"])
    return out


async def _settled(db, cid, vid, n) -> bool:
    """All of the vehicle's fixes stored and every outbox row delivered."""
    stored = await fleet.count(db, cid, "SELECT count(*) FROM gps_positions WHERE vehicle_id = $1", vid)
    counts = await _status_counts(db, cid)
    return stored == n and set(counts) <= {"delivered"}


@pytest.mark.timeout(300)
async def test_offline_day_gives_the_webhooks_of_an_online_day(server_env, database_url, tmp_path):
    db = await Database(database_url, AppRole.from_secret(TEST_SECRET), min_size=1, max_size=3).open()
    receiver = await Receiver().start()
    server = None
    try:
        fixes = _day()
        day = dt.datetime.fromtimestamp(fixes[0]["t"] / 1000, dt.UTC).date().isoformat()
        path = tmp_path / "fixes.json"
        path.write_text(json.dumps(fixes))
        slug = f"offline-day-{int(time.time()) % 100000}"
        cid = await fleet.customer(db, slug)
        customer = sync_peers.Customer(str(cid), slug)
        online, offline = await fleet.vehicle(db, cid, "van-online"), await fleet.vehicle(db, cid, "van-offline")
        crossing = fixes[20 + 60 + 8 + 30 + 20 + 20]  # the middle of the drive south
        await fleet.circle(db, cid, "depot", crossing["lat"], crossing["lng"], 150)
        secret = generate_secret()
        async with db.tenant(cid) as conn:
            await fleet_store.put_settings(conn, cid, {**SETTINGS, "offline_after_s": 3600})
            await webhook_store.insert_endpoint(
                conn, cid, url=receiver.url, events=EVENTS, description="", secret=secret
            )
        server = await asyncio.to_thread(
            ServerProcess({**server_env, **NODE_ENV}, log_path=tmp_path / "server.log").start
        )

        # A: online all day, fixes sent as recorded, in batches a second apart
        got = await asyncio.to_thread(
            _tracker, server, customer, online, day, path, "--offline", "0", "--batches", str(BATCHES)
        )
        assert got == {"before": 0, "points": len(fixes)}
        await _until(lambda: _settled(db, cid, online, len(fixes)), timeout=120)

        # B: the same fixes recorded offline, then one connect
        got = await asyncio.to_thread(_tracker, server, customer, offline, day, path, "--offline", "1")
        uploaded = time.monotonic()
        assert got == {"before": 0, "points": len(fixes)}
        await _until(lambda: _settled(db, cid, offline, len(fixes)), timeout=120)
        delivery_s = time.monotonic() - uploaded

        # the server took A's fixes in its batches and B's in one (its tracking_batch log lines)
        # (a batch pair could merge on a loaded machine: at least 3 of the 5)
        batches = _batches(tmp_path / "server.log")
        assert len(batches[str(online)]) >= 3 and sum(batches[str(online)]) == len(fixes), batches
        assert batches[str(offline)] == [len(fixes)], batches
        seen = _normalised(receiver.answered, secret, (online, offline))
        a, b = seen[str(online)], seen[str(offline)]
        per_type = collections.Counter(kind for kind, _ in a.elements())
        print(f"\nwebhooks per vehicle: {dict(sorted(per_type.items()))}; offline day delivered in {delivery_s:.2f} s")
        for kind in ("trip.started", "trip.ended", "stop.started", "geofence.entered", "overspeed.started"):
            assert per_type[kind] >= 1, kind
        assert a == b, (sorted((a - b).elements()), sorted((b - a).elements()))
        assert not any(kind.endswith(".retracted") for kind in per_type)  # in order, nothing to take back
        # at-least-once, and here exactly once: one answered delivery per webhook-id
        ids = [r.webhook_id for r in receiver.answered]
        assert len(ids) == len(set(ids)) == 2 * sum(a.values())
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
        await receiver.close()
        await db.close()
