"""The webhook messages of the pipeline's geofence events (published by its geofence step, in the
batch's transaction: domain/webhooks/outbox.py).

    geofence.entered / geofence.exited       a recorded event; dedupe key geofence_event:<row id>
    geofence.entered.retracted / ...exited.retracted
                                             a backfill removed a recorded event (it sits no more
                                             in the recomputed sequence); sent only to endpoints
                                             that had the event

The other fleet events (tracking.fleet_events: trips, stops, overspeed, device offline/online,
quota.reached) likewise (`fleet_messages`): <type> and <type>.retracted, dedupe key
fleet_event:<row id>.

Ordered per vehicle (ordering key: the vehicle id): the retractions of a batch first, then its new
events, each in time order. A recomputation that finds the same event again keeps its row and
announces nothing; one that moves an event retracts the old row and announces the new one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sync_server.domain.webhooks.outbox import Message

TYPES = {"enter": "geofence.entered", "exit": "geofence.exited"}


def _key(row: Any) -> str:
    return f"geofence_event:{row['id']}"


def _data(vehicle_id: uuid.UUID, row: Any) -> dict[str, Any]:
    return {
        "vehicle_id": str(vehicle_id),
        "geofence_id": str(row["geofence_id"]),
        "event_id": row["id"],
        "event": row["event"],
        "time": row["time"],
        "lat": row["lat"],
        "lng": row["lng"],
    }


def geofence_messages(vehicle_id: uuid.UUID, recorded: Sequence[Any], retracted: Sequence[Any]) -> list[Message]:
    """Messages for geofence_events rows just inserted (`recorded`) and just deleted (`retracted`)."""
    ordering = str(vehicle_id)
    messages = [
        Message(
            TYPES[row["event"]] + ".retracted",
            _data(vehicle_id, row),
            row["time"],
            ordering_key=ordering,
            dedupe_key=_key(row) + ":retracted",
            retracts=_key(row),
        )
        for row in sorted(retracted, key=lambda r: r["time"])
    ]
    messages += [
        Message(TYPES[row["event"]], _data(vehicle_id, row), row["time"], ordering_key=ordering, dedupe_key=_key(row))
        for row in sorted(recorded, key=lambda r: r["time"])
    ]
    return messages


def _fleet_key(event: Any) -> str:
    return f"fleet_event:{event.id}"


def fleet_messages(changes: Any) -> list[Message]:
    """Messages for fleet_events (tracking.fleet_events.Changes): its retractions first
    ("<type>.retracted", sent where the event was), then its new events, each in time order.
    Ordered per vehicle (customer events, quota.reached, per customer)."""
    messages = [
        Message(
            e.type + ".retracted",
            e.payload(),
            e.occurred_at,
            ordering_key=e.ordering_key,
            dedupe_key=_fleet_key(e) + ":retracted",
            retracts=_fleet_key(e),
        )
        for e in sorted(changes.retracted, key=lambda e: e.ms)
    ]
    messages += [
        Message(e.type, e.payload(), e.occurred_at, ordering_key=e.ordering_key, dedupe_key=_fleet_key(e))
        for e in sorted(changes.added, key=lambda e: e.ms)
    ]
    return messages
