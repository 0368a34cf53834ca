"""The fleet document's event feed (tracking.event_feed): bounded, newest last, one entry per event
id, written through a real room (the update reaches the room's peers like any other). The pipeline's
geofence events reaching it end to end: tests/test_tracking_sync.py and the app's browser test."""

from __future__ import annotations

import math
import uuid

import pycrdt
import pytest

from sync_server.domain.tracking.event_feed import FEED_LIMIT, Entry, EventFeed, append_entries, geofence_entry
from sync_server.domain.tracking.geofences import Event
from sync_server.sync.rooms import RoomRegistry


def _entry(i: int, **data) -> Entry:
    return Entry(id=f"e{i}", type="test_event", t=1_700_000_000_000 + i, vehicle_id=None, data=data)


def test_feed_keeps_the_newest_entries_once_each():
    doc = pycrdt.Doc()
    with doc.transaction():
        assert append_entries(doc, [_entry(i).as_json() for i in range(5)], limit=3) == 5
    events = doc.get("events", type=pycrdt.Array).to_py()
    assert [e["id"] for e in events] == ["e2", "e3", "e4"]
    with doc.transaction():  # the same ids again (a replay): nothing appended
        assert append_entries(doc, [_entry(3).as_json(), _entry(4).as_json(), _entry(5).as_json()], limit=3) == 1
    assert [e["id"] for e in doc.get("events", type=pycrdt.Array).to_py()] == ["e3", "e4", "e5"]


@pytest.mark.parametrize(
    "bad",
    [
        Entry(id="x", type="", t=0),
        Entry(id="x", type="t" * 65, t=0),
        Entry(id="x", type="t", t=0, data={"type": "spoof"}),
        Entry(id="x", type="t", t=0, data={"speed": math.nan}),
        Entry(id="x", type="t", t=0, data={"nested": {"a": 1}}),
        Entry(id="x", type="t", t=0, data={f"f{i}": i for i in range(17)}),
    ],
)
def test_invalid_entries_are_refused(bad):
    with pytest.raises(ValueError):
        bad.as_json()


def test_long_text_is_cut():
    assert len(_entry(1, note="n" * 10_000).as_json()["note"]) == 500


async def test_publish_writes_into_the_fleet_room_and_reaches_its_peers():
    rooms = RoomRegistry(evict_after=0)
    feed = EventFeed(rooms)
    room = await rooms.get("c1", "fleet")
    peer = pycrdt.Doc()
    frames: list[bytes] = []
    room.broadcast = frames.append  # what the room relays to its connections
    vid, gid = uuid.uuid4(), uuid.uuid4()
    enter = Event(gid, "enter", 1_700_000_000_000, 52.5, 13.4)
    await feed.geofence_events("c1", vid, [enter])
    await feed.geofence_events("c1", vid, [enter])  # replayed: one entry
    assert len(frames) == 2
    peer.apply_update(room.ydoc.get_update())
    events = peer.get("events", type=pycrdt.Array).to_py()
    assert events == [
        {
            "id": geofence_entry(vid, enter).id,
            "type": "geofence_enter",
            "t": 1_700_000_000_000,
            "vehicle_id": str(vid),
            "geofence_id": str(gid),
            "lat": 52.5,
            "lng": 13.4,
        }
    ]
    await feed.publish("c1", [_entry(i) for i in range(FEED_LIMIT + 10)])
    events = room.ydoc.get("events", type=pycrdt.Array).to_py()
    assert len(events) == FEED_LIMIT and events[-1]["id"] == f"e{FEED_LIMIT + 9}"
    other = await rooms.get("c2", "fleet")  # another customer's feed is another room
    assert other.ydoc.get("events", type=pycrdt.Array).to_py() == []
