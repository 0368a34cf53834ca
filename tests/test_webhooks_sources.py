"""The event sources wired to the webhook outbox: geofence enter/exit from the tracking pipeline
(published in the batch's transaction, backfills retracting what moved) and document.updated."""

from __future__ import annotations

import json

from storage import DatabaseRegistry
from storage import webhooks as store
from sync_server.domain.tracking.pipeline import Pipeline
from sync_server.domain.webhooks.endpoints import generate_secret

from .support import fleet
from .support.webhook_receiver import Receiver
from .test_tracking_pipeline import _fences, at, route, run
from .test_webhooks_delivery import _until, _worker


async def _endpoint(db, cid, url, events):
    secret = generate_secret()
    async with db.tenant(cid) as conn:
        row = await store.insert_endpoint(conn, cid, url=url, events=events, description="", secret=secret)
    return row["id"], secret


async def _outbox(db, cid, endpoint_id):
    async with db.tenant(cid) as conn:
        rows = await conn.fetch("SELECT body FROM webhook_outbox WHERE endpoint_id = $1 ORDER BY seq", endpoint_id)
    return [json.loads(r["body"]) for r in rows]


async def test_geofence_events_are_announced_with_their_batch_and_retracted_when_a_backfill_moves_them(db):
    registry = DatabaseRegistry(db)
    await registry.reload()
    pipeline = Pipeline(registry)
    cid = await fleet.customer(db)
    vid = await fleet.vehicle(db, cid)
    circle, polygon = await _fences(db, cid)
    receiver = await Receiver().start()
    try:
        fences, secret = await _endpoint(db, cid, receiver.url, ["geofence.entered", "geofence.exited"])
        trips, _ = await _endpoint(db, cid, receiver.url, ["trip.*"])
        fixes = route()
        late = fixes.pop(3)  # the first fix inside the circle arrives days later
        await run(pipeline, cid, vid, fixes)
        sent = await _outbox(db, cid, fences)
        assert [(m["type"], m["data"]["geofence_id"], m["data"]["time"]) for m in sent] == [
            ("geofence.entered", str(circle), _iso(at(4))),
            ("geofence.exited", str(circle), _iso(at(6))),
            ("geofence.entered", str(polygon), _iso(at(11))),
            ("geofence.exited", str(polygon), _iso(at(16))),
        ]
        assert sent[0]["timestamp"] == _iso(at(4)) and sent[0]["data"]["vehicle_id"] == str(vid)
        assert await _outbox(db, cid, trips) == []  # its filter takes no geofence events
        await run(pipeline, cid, vid, fixes)  # a replay: same events, nothing announced again
        assert len(await _outbox(db, cid, fences)) == 4

        await run(pipeline, cid, vid, [late], source="osmand")  # the backfill: enter moves from 4 to 3
        sent = await _outbox(db, cid, fences)
        assert [(m["type"], m["data"]["time"]) for m in sent[4:]] == [
            ("geofence.entered.retracted", _iso(at(4))),
            ("geofence.entered", _iso(at(3))),
        ]
        assert sent[4]["data"]["event_id"] == sent[0]["data"]["event_id"]
        assert await _outbox(db, cid, trips) == []  # never had the event: hears nothing of its retraction

        async with _worker(db):
            await _until(lambda: _delivered(db, cid, 6))
        got = [r.verified(secret) for r in receiver.answered]
        assert [(m["type"], m["data"]["time"]) for m in got] == [(m["type"], m["data"]["time"]) for m in sent]
    finally:
        await receiver.close()


async def _delivered(db, cid, n):
    async with db.tenant(cid) as conn:
        return await conn.fetchval("SELECT count(*) FROM webhook_outbox WHERE status = 'delivered'") == n


def _iso(when) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
