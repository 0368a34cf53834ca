"""The customer's live event feed: the `fleet` document's Y.Array `events`, oldest first, bounded.

Every dispatcher's app has the fleet document open (it holds the `live` map too), so an entry
appended here reaches each of them as a normal Yjs update: relayed, persisted, fanned out to the
other nodes. The feed is a view of the newest FEED_LIMIT events, not their record: geofence events
are stored in `geofence_events` (the REST API pages through them) and the feed is written only
after the transaction that recorded them committed, so it never shows an event that rolled back.

An entry is a JSON object (a Yjs "any" value, read in JavaScript as a plain object):

    {"id": str,           stable per event: writing the same entry twice keeps one
     "type": str,         "geofence_enter", "geofence_exit", or another module's type
     "t": int,            when it happened, ms since the epoch (UTC)
     "vehicle_id": str | None,
     ...}                 the type's own fields (JSON scalars), e.g. geofence_id, lat, lng

Beside the feed, the Y.Map `changes` (what -> ms of the last change, e.g. "geofences") tells every
open app that REST data it shows changed, so it fetches it again (`EventFeed.changed`): geofences
stay in PostgreSQL, edited through REST, and other dispatchers' maps follow within one round trip.

Writers: the tracking pipeline's geofence events (`EventFeed.geofence_events`, an `on_events`
listener) and any other domain code through `EventFeed.publish(customer_id, entries)`, which the
node's runtime holds as `rt.event_feed`.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pycrdt
import structlog

log = structlog.get_logger("sync_server.domain.tracking.event_feed")

FLEET_DOC = "fleet"  # the customer document the feed lives in (beside the materializer's `live` map)
EVENTS = "events"  # the Y.Array's name
CHANGES = "changes"  # Y.Map: what -> ms of its last change (the apps fetch it again)
FEED_LIMIT = 200  # entries kept; older ones are deleted from the front as new ones arrive
MAX_TYPE = 64  # characters of an entry's type
MAX_FIELDS = 16  # extra fields of one entry
MAX_TEXT = 500  # characters of one string field


@dataclass(frozen=True)
class Entry:
    """One event for the feed. `data` holds the type's own JSON scalar fields."""

    id: str
    type: str
    t: int
    vehicle_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        if not self.type or len(self.type) > MAX_TYPE:
            raise ValueError("entry type must be 1..64 characters")
        if len(self.data) > MAX_FIELDS:
            raise ValueError("too many fields in a feed entry")
        out: dict[str, Any] = {}
        for key, value in self.data.items():
            if key in ("id", "type", "t", "vehicle_id"):
                raise ValueError(f"field {key!r} is reserved")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"field {key!r} is not finite")
            if isinstance(value, str):
                value = value[:MAX_TEXT]
            elif value is not None and not isinstance(value, bool | int | float):
                raise ValueError(f"field {key!r} must be a JSON scalar")
            out[key] = value
        return {"id": self.id, "type": self.type, "t": int(self.t), "vehicle_id": self.vehicle_id, **out}


def append_entries(doc: pycrdt.Doc, entries: Sequence[dict[str, Any]], limit: int = FEED_LIMIT) -> int:
    """Append the entries not in the feed yet (by id) to `doc`'s `events` array and trim it to the
    newest `limit`; returns how many were appended. Runs inside the caller's transaction."""
    events = doc.get(EVENTS, type=pycrdt.Array)
    seen = {e.get("id") for e in events.to_py() or () if isinstance(e, dict)}
    fresh = []
    for entry in entries:
        if entry["id"] not in seen:
            seen.add(entry["id"])
            fresh.append(entry)
    fresh.sort(key=lambda e: e["t"])  # a batch's events in time order (the feed is read newest last)
    if fresh:
        events.extend(fresh)
    excess = len(events) - limit
    if excess > 0:
        del events[0:excess]
    return len(fresh)


class EventFeed:
    """Writes feed entries into the customer's fleet document (through `RoomRegistry.get` and
    `Room.write`, so the edit is a normal update)."""

    def __init__(self, rooms: Any, limit: int = FEED_LIMIT) -> None:
        self.rooms = rooms  # sync_server.sync.rooms.RoomRegistry
        self.limit = limit

    async def publish(self, customer_id: str, entries: Sequence[Entry]) -> int:
        """Append `entries` to the customer's feed (call after the transaction that made them
        committed); returns how many were new. Invalid entries raise ValueError before anything is
        written."""
        values = [e.as_json() for e in entries]
        if not values:
            return 0
        room = await self.rooms.get(str(customer_id), FLEET_DOC)
        appended = 0

        def edit(doc: pycrdt.Doc) -> None:
            nonlocal appended
            appended = append_entries(doc, values, self.limit)

        await room.write(edit)
        log.debug("event_feed_published", customer_id=str(customer_id), entries=appended)
        return appended

    async def changed(self, customer_id: str, what: str) -> None:
        """Tell the customer's open apps that `what` (e.g. "geofences") changed."""
        room = await self.rooms.get(str(customer_id), FLEET_DOC)
        stamp = time.time() * 1000

        def edit(doc: pycrdt.Doc) -> None:
            changes = doc.get(CHANGES, type=pycrdt.Map)
            changes[what] = max(stamp, float(changes.get(what) or 0) + 1)  # strictly increasing per key

        await room.write(edit)

    async def geofence_events(self, customer_id: str, vehicle_id: uuid.UUID, events: Sequence[Any]) -> None:
        """The tracking pipeline's listener (Pipeline.on_events): its newly recorded enter/exit
        events (tracking.geofences.Event) after their batch committed."""
        await self.publish(customer_id, [geofence_entry(vehicle_id, e) for e in events])


def geofence_entry(vehicle_id: uuid.UUID, event: Any) -> Entry:
    """A feed entry for one tracking.geofences.Event (its id is the event's natural key, so a
    replayed batch writes nothing twice)."""
    return Entry(
        id=f"geofence:{event.geofence_id}:{vehicle_id}:{event.ms}:{event.event}",
        type=f"geofence_{event.event}",
        t=event.ms,
        vehicle_id=str(vehicle_id),
        data={"geofence_id": str(event.geofence_id), "lat": float(event.lat), "lng": float(event.lng)},
    )
