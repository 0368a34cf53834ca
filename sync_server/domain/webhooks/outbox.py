"""The webhook outbox: what an event source calls to announce events to a customer's endpoints.

    await outbox.publish(conn, customer_id, [Message("geofence.entered", {...}, fix_time, ordering_key=vid)])

`publish` runs INSIDE the caller's tenant transaction, so the messages commit (or roll back) with
the events they announce: nothing announced is lost, nothing rolled back is announced. It writes
one webhook_outbox row per message and enabled endpoint whose `events` take the type (the type
itself, "*", a prefix pattern such as "geofence.*"; an endpoint that takes "X" also takes
"X.retracted"); the delivery worker (delivery.py) sends them later, at least once each.

Ordering: deliveries of one endpoint with the same `ordering_key` (e.g. a vehicle id) are sent in
publish order, each after the previous one was delivered or dead-lettered. `dedupe_key`: a stable
id of the event; publishing a key an endpoint already has in its outbox enqueues nothing (a replay
or a recomputation that finds the same event announces it once). Reuse a key only for the same
event: a retraction needs its own (e.g. the event's key + ":retracted").

Retractions: a Message with `retracts` (the retracted event's dedupe_key) goes to exactly the
endpoints that have that event in their outbox (delivered or still to be: it follows it, in order
when both have the same ordering key), whatever their filter says now; an endpoint that never got
the event hears nothing of its retraction.

The body POSTed is {"type", "timestamp" (occurred_at, ISO 8601 UTC), "data"}, serialised once here
so every attempt signs the same bytes; `webhook-id` is msg_<uuid hex>, one per message (the same
for every endpoint and retry).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from storage import webhooks as store

MAX_BODY_BYTES = 64 * 1024  # one message's JSON body
TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")  # e.g. trip.started.retracted
MAX_KEY_LENGTH = 200


@dataclass(frozen=True)
class Message:
    type: str  # "geofence.entered", "trip.started", "trip.started.retracted", ...
    data: dict[str, Any]  # JSON-serialisable, includes "vehicle_id" where there is one
    occurred_at: dt.datetime  # when the event happened (fix time), tz-aware UTC
    ordering_key: str | None = None  # deliveries ordered per (endpoint, ordering_key), e.g. vehicle id
    dedupe_key: str | None = None  # stable id: publishing the same key twice enqueues once
    retracts: str | None = None  # dedupe_key of the event this retracts: sent only where that one was


def message_id(value: uuid.UUID) -> str:
    """The webhook-id header of a message."""
    return f"msg_{value.hex}"


def timestamp(when: dt.datetime) -> str:
    """ISO 8601 in UTC with a Z, milliseconds kept."""
    if when.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body(message: Message) -> str:
    """The JSON POSTed for `message` (strict JSON: no NaN or Infinity, bounded size)."""
    if not TYPE_PATTERN.match(message.type) or len(message.type) > 100:
        raise ValueError(f"not an event type: {message.type!r}")
    for key in (message.ordering_key, message.dedupe_key, message.retracts):
        if key is not None and len(key) > MAX_KEY_LENGTH:
            raise ValueError("ordering_key, dedupe_key and retracts are at most 200 characters")
    text = json.dumps(
        {"type": message.type, "timestamp": timestamp(message.occurred_at), "data": message.data},
        separators=(",", ":"),
        allow_nan=False,
        default=_jsonable,
    )
    if len(text.encode()) > MAX_BODY_BYTES:
        raise ValueError(f"webhook body over {MAX_BODY_BYTES} bytes ({message.type})")
    return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return timestamp(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


async def publish(conn: asyncpg.Connection, customer_id: uuid.UUID, messages: Sequence[Message]) -> int:
    """Enqueue `messages` for every enabled endpoint of the customer whose events match, in the
    caller's (tenant) transaction; returns the number of deliveries enqueued."""
    return await _enqueue(conn, customer_id, messages, None)


async def publish_to(conn: asyncpg.Connection, customer_id: uuid.UUID, endpoint_id: uuid.UUID, message: Message) -> int:
    """Enqueue one message for one endpoint whatever its events (the test send)."""
    return await _enqueue(conn, customer_id, [message], endpoint_id)


async def _enqueue(
    conn: asyncpg.Connection, customer_id: uuid.UUID, messages: Sequence[Message], endpoint_id: uuid.UUID | None
) -> int:
    if not messages:
        return 0
    bodies = [body(m) for m in messages]  # ValueError before anything is written
    return await store.enqueue(
        conn,
        customer_id,
        message_ids=[uuid.uuid4() for _ in messages],
        types=[m.type for m in messages],
        bodies=bodies,
        occurred=[m.occurred_at for m in messages],
        ordering_keys=[m.ordering_key for m in messages],
        dedupe_keys=[m.dedupe_key for m in messages],
        retracts=[m.retracts for m in messages],
        endpoint_id=endpoint_id,
    )
