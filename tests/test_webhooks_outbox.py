"""The outbox contract (domain/webhooks/outbox.py): publish in the caller's transaction, per
matching endpoint, once per dedupe key, in order."""

import datetime as dt
import json
import uuid

import pytest

from storage import webhooks as store
from sync_server.domain.webhooks.outbox import Message, publish

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


async def _customer(db, slug):
    async with db.operator("test_setup") as conn:
        return await conn.fetchval("INSERT INTO customers (slug, name) VALUES ($1, $1) RETURNING id", slug)


async def _endpoint(db, cid, events, url="https://example.com/hook"):
    async with db.tenant(cid) as conn:
        row = await store.insert_endpoint(conn, cid, url=url, events=events, description="", secret="whsec_AAAA")
    return row["id"]


async def _rows(db, cid):
    async with db.tenant(cid) as conn:
        return await conn.fetch(
            "SELECT endpoint_id, event_type, body, ordering_key, dedupe_key, message_id FROM webhook_outbox ORDER BY seq"
        )


async def test_publish_matches_events_and_dedupes(db):
    cid = await _customer(db, "alpha")
    star = await _endpoint(db, cid, ["*"])
    fences = await _endpoint(db, cid, ["geofence.*"])
    trips = await _endpoint(db, cid, ["trip.started"])
    vid = uuid.uuid4()
    msgs = [
        Message("geofence.entered", {"vehicle_id": vid, "n": 1}, T0, ordering_key=str(vid), dedupe_key="g1"),
        Message("trip.started", {"vehicle_id": str(vid)}, T0, ordering_key=str(vid), dedupe_key="t1"),
        Message("trip.started.retracted", {"vehicle_id": str(vid)}, T0, dedupe_key="t1:retracted"),
        Message("document.updated", {"doc": "fleet"}, T0),
    ]
    async with db.tenant(cid) as conn:
        assert await publish(conn, cid, msgs) == 4 + 1 + 2
        assert await publish(conn, cid, msgs[:3]) == 0  # same dedupe keys: nothing new
    rows = await _rows(db, cid)
    by_endpoint = {e: [r["event_type"] for r in rows if r["endpoint_id"] == e] for e in (star, fences, trips)}
    assert by_endpoint[star] == ["geofence.entered", "trip.started", "trip.started.retracted", "document.updated"]
    assert by_endpoint[fences] == ["geofence.entered"]
    assert by_endpoint[trips] == ["trip.started", "trip.started.retracted"]
    first = json.loads(rows[0]["body"])
    assert first == {
        "type": "geofence.entered",
        "timestamp": "2026-11-30T12:00:00.000Z",
        "data": {"vehicle_id": str(vid), "n": 1},
    }
    # one message id per message, the same for every endpoint
    ids = {r["message_id"] for r in rows if r["event_type"] == "geofence.entered"}
    assert len(ids) == 1


async def test_publish_rolls_back_with_the_caller_and_skips_disabled_endpoints(db):
    cid = await _customer(db, "alpha")
    await _endpoint(db, cid, ["*"])
    off = await _endpoint(db, cid, ["*"])
    async with db.tenant(cid) as conn:
        await conn.execute("UPDATE webhook_endpoints SET enabled = false WHERE id = $1", off)
    with pytest.raises(RuntimeError):
        async with db.tenant(cid) as conn:
            assert await publish(conn, cid, [Message("trip.ended", {}, T0)]) == 1
            raise RuntimeError("the events' transaction fails")
    assert await _rows(db, cid) == []
    async with db.tenant(cid) as conn:
        assert await publish(conn, cid, [Message("trip.ended", {}, T0)]) == 1


async def test_publish_refuses_bad_messages_before_writing(db):
    cid = await _customer(db, "alpha")
    await _endpoint(db, cid, ["*"])
    async with db.tenant(cid) as conn:
        for bad in (
            Message("NoDots", {}, T0),
            Message("trip.ended", {"x": float("nan")}, T0),
            Message("trip.ended", {"x": "y" * 70_000}, T0),
            Message("trip.ended", {}, T0.replace(tzinfo=None)),
            Message("trip.ended", {}, T0, dedupe_key="k" * 201),
        ):
            with pytest.raises(ValueError):
                await publish(conn, cid, [Message("trip.ended", {}, T0), bad])
    assert await _rows(db, cid) == []


async def test_another_customer_endpoints_get_nothing(db):
    a = await _customer(db, "alpha")
    b = await _customer(db, "bravo")
    await _endpoint(db, b, ["*"])
    async with db.tenant(a) as conn:
        assert await publish(conn, a, [Message("trip.ended", {}, T0)]) == 0
    assert await _rows(db, b) == []
