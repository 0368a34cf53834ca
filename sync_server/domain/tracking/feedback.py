"""Materialization feedback: what became of a track document's points, published in its room as the
server's own awareness state (client id rooms.SERVER_AWARENESS_ID), so a phone can show "127 fixes
rejected: quota reached" without calling REST.

The state (JSON, version 1; at most MAX_REASONS reasons, well under 2 KB):

    {"webhost": "materialization", "v": 1, "doc": "tracks/{vehicle}/{day}",
     "materialized": 1200,                 elements of `points` processed (a prefix)
     "stored": 1000,                       of those, stored as positions
     "rejected": {"quota_exceeded": 127, "duplicate": 73},   per reason (filters.CHECKS, quota, ...)
     "quota": {"day": "2026-12-01", "limit": 1000, "used": 1000, "reached": true},
     "updated_at": 1764547200000}          epoch ms of the batch that produced it

The totals are durable (track_progress, written in the batch's transaction), so every node serving
the room publishes the same numbers: on load, and after each batch it commits.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass, field

import asyncpg

from storage import track_progress
from storage import usage as usage_store
from sync_server.domain.billing.plans import Limits
from sync_server.domain.tracking import quota

KIND = "materialization"
VERSION = 1
MAX_REASONS = 32


@dataclass(frozen=True)
class Totals:
    doc: str
    materialized: int
    stored: int
    rejected: dict[str, int] = field(default_factory=dict)
    day: dt.date | None = None
    limit: int = 0
    used: int = 0

    def state(self) -> str:
        """The awareness state (JSON text, bounded)."""
        reasons = sorted(self.rejected.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_REASONS]
        value = {
            "webhost": KIND,
            "v": VERSION,
            "doc": self.doc,
            "materialized": self.materialized,
            "stored": self.stored,
            "rejected": {str(reason)[:64]: int(n) for reason, n in reasons},
            "quota": {
                "day": self.day.isoformat() if self.day else None,
                "limit": self.limit,
                "used": self.used,
                "reached": self.used >= self.limit,
            },
            "updated_at": int(time.time() * 1000),
        }
        return json.dumps(value, separators=(",", ":"))


async def totals(
    conn: asyncpg.Connection, customer_id: uuid.UUID, doc: str, day: dt.date | None, limits: Limits, row
) -> Totals | None:
    """The document's totals from its track_progress row (None without one), with the quota of its day."""
    if row is None:
        return None
    used = 0
    if day is not None:
        used = (await usage_store.values(conn, customer_id, quota.POINTS_METRIC, [day])).get(day, 0)
    rejected = row["rejected"] if isinstance(row["rejected"], dict) else json.loads(row["rejected"] or "{}")
    return Totals(
        doc=doc,
        materialized=int(row["elements"]),
        stored=int(row["stored"]),
        rejected={str(k): int(v) for k, v in rejected.items()},
        day=day,
        limit=limits.gps_points_per_day,
        used=int(used),
    )


async def read(conn: asyncpg.Connection, customer_id: uuid.UUID, doc: str, day: dt.date, limits: Limits) -> Totals:
    """The document's totals as stored (zeros before its first batch)."""
    row = await track_progress.feedback(conn, customer_id, doc)
    found = await totals(conn, customer_id, doc, day, limits, row)
    if found is None:
        used = (await usage_store.values(conn, customer_id, quota.POINTS_METRIC, [day])).get(day, 0)
        return Totals(doc, 0, 0, {}, day, limits.gps_points_per_day, int(used))
    return found
