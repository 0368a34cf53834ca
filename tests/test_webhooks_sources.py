"""The event sources wired to the webhook outbox: geofence enter/exit from the tracking pipeline
(published in the batch's transaction, backfills retracting what moved) and document.updated."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json

import pycrdt

from storage import DatabaseRegistry
from storage import webhooks as store
from sync_server.domain.tracking.pipeline import Pipeline
from sync_server.domain.webhooks.endpoints import generate_secret
from sync_server.node.app import create_app

from .rest.conftest import Api, app_settings
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
        others, _ = await _endpoint(db, cid, receiver.url, ["webhook.test"])
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
        assert await _outbox(db, cid, others) == []  # its filter takes no geofence events
        await run(pipeline, cid, vid, fixes)  # a replay: same events, nothing announced again
        assert len(await _outbox(db, cid, fences)) == 4

        await run(pipeline, cid, vid, [late], source="osmand")  # the backfill: enter moves from 4 to 3
        sent = await _outbox(db, cid, fences)
        assert [(m["type"], m["data"]["time"]) for m in sent[4:]] == [
            ("geofence.entered.retracted", _iso(at(4))),
            ("geofence.entered", _iso(at(3))),
        ]
        assert sent[4]["data"]["event_id"] == sent[0]["data"]["event_id"]
        assert await _outbox(db, cid, others) == []  # never had the event: hears nothing of its retraction

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


async def test_document_updated_is_debounced_per_document_and_carries_the_state_vector(database_url):
    settings = dataclasses.replace(
        app_settings(database_url), webhook_document_interval=1.0, webhook_poll_seconds=0.05, webhook_retry_base=0.05
    )
    app = create_app(settings)
    receiver = await Receiver().start()
    octets = {"content-type": "application/octet-stream"}
    try:
        async with app.test_app() as test_app:
            api = Api(app, test_app.test_client())
            c = await api.customer()
            r = await api.post(
                "/api/v1/webhooks", headers=c.auth, json={"url": receiver.url, "events": ["document.updated"]}
            )
            secret = (await r.get_json())["secret"]
            notes = pycrdt.Doc()
            text = notes.get("t", type=pycrdt.Text)
            for i in range(5):  # a burst: the first is announced at once, the other four in one more
                before = notes.get_state()
                text += f"line {i}\n"
                r = await api.post(
                    "/api/v1/docs/notes/updates", headers={**c.auth, **octets}, data=notes.get_update(before)
                )
                assert r.status_code == 200, await r.get_data(as_text=True)
            other = pycrdt.Doc()
            other.get("t", type=pycrdt.Text).insert(0, "x")
            await api.post("/api/v1/docs/other/updates", headers={**c.auth, **octets}, data=other.get_update())
            await _until(lambda: _answered(receiver, 3), timeout=15)
            await asyncio.sleep(1.5)  # and nothing more comes: the burst is covered
            got = [r.verified(secret) for r in receiver.answered]
        assert sorted(m["data"]["doc"] for m in got) == ["notes", "notes", "other"]
        announced = [m for m in got if m["data"]["doc"] == "notes"]
        assert base64.b64decode(announced[-1]["data"]["state_vector"]) == notes.get_state()
        gap = _parse(announced[1]["timestamp"]) - _parse(announced[0]["timestamp"])
        assert gap.total_seconds() >= 0.99  # at most one per document per interval
    finally:
        await receiver.close()


async def _answered(receiver, n):
    return len(receiver.answered) >= n


def _parse(text):
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
