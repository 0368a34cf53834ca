"""gps_positions and vehicle_positions_latest (tenant connections: Database.tenant / set_tenant).

Writes go through a per-session temporary staging table: binary COPY into it, then one
INSERT ... SELECT ... ON CONFLICT DO NOTHING on the (customer_id, vehicle_id, time) key, so a replay
never duplicates a row and a batch costs three round trips whatever its size (one merge per
transaction: the staging table empties at commit). A batch is one vehicle's fixes from one source,
so customer, vehicle and source are parameters of the merge, not columns of every staged row; the
COPY payload is built from numpy columns in one pass (~0.2 us a row, against ~1.5 us for asyncpg's
per-record encoding of the ten-column tuples it replaced). Optional values travel as NaN and become
NULL in the merge (a fix never carries a real NaN: decoding rejects non-finite numbers).
Every query names customer_id although RLS already scopes it: the policy's OR keeps the planner
from using it as an index condition.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple

import asyncpg
import numpy as np

STAGE = "gps_positions_stage"
# speed/heading/accuracy/altitude are `real` (float32). Widened to a Python float they carry float32
# noise (1.36 -> 1.3600000143051147) into every JSON answer and export; read through their text form
# (PostgreSQL writes the shortest digits that give the same float32 back) they come out as recorded.
_RECORDED = "::text::float8"


def _float32_as_recorded(*columns: str, table: str = "") -> str:
    return ", ".join(f"{table}{c}{_RECORDED} AS {c}" for c in columns)


_FIX = "time, lat, lng, " + _float32_as_recorded("speed", "heading", "accuracy", "altitude")
_PG_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z, PostgreSQL's timestamp origin
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8  # signature, no flags, no header extension
_COPY_TRAILER = b"\xff\xff"
# one staged row in PostgreSQL's binary COPY format: field count, then (length, big-endian value) each
_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("time_len", ">i4"),
        ("time", ">i8"),
        ("lat_len", ">i4"),
        ("lat", ">f8"),
        ("lng_len", ">i4"),
        ("lng", ">f8"),
        ("speed_len", ">i4"),
        ("speed", ">f4"),
        ("heading_len", ">i4"),
        ("heading", ">f4"),
        ("accuracy_len", ">i4"),
        ("accuracy", ">f4"),
        ("altitude_len", ">i4"),
        ("altitude", ">f4"),
    ]
)
_CHUNK = 1 << 20


class Fixes(NamedTuple):
    """One vehicle's fixes as columns: epoch milliseconds (int64), lat/lng (float64), speed/heading/
    accuracy/altitude (float32 or float64, NaN where absent)."""

    ms: np.ndarray
    lat: np.ndarray
    lng: np.ndarray
    speed: np.ndarray
    heading: np.ndarray
    accuracy: np.ndarray
    altitude: np.ndarray

    def take(self, index: Any) -> Fixes:
        return Fixes(*(column[index] for column in self))


def copy_payload(fixes: Fixes) -> bytes:
    """The binary COPY stream of the staging table for `fixes`."""
    rows = np.empty(len(fixes.ms), _ROW)
    rows["fields"] = 7
    for name, size in (
        ("time", 8),
        ("lat", 8),
        ("lng", 8),
        ("speed", 4),
        ("heading", 4),
        ("accuracy", 4),
        ("altitude", 4),
    ):
        rows[name + "_len"] = size
    rows["time"] = (fixes.ms - _PG_EPOCH_MS) * 1000  # microseconds since 2000-01-01
    rows["lat"], rows["lng"] = fixes.lat, fixes.lng
    rows["speed"], rows["heading"] = fixes.speed, fixes.heading
    rows["accuracy"], rows["altitude"] = fixes.accuracy, fixes.altitude
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


async def _chunks(payload: bytes) -> AsyncIterator[memoryview]:
    view = memoryview(payload)
    for start in range(0, len(view), _CHUNK):
        yield view[start : start + _CHUNK]


async def stage_and_merge(conn: asyncpg.Connection, customer_id, vehicle_id, source: str, fixes: Fixes) -> int:
    """COPY one vehicle's `fixes` into the staging table and merge them; returns the number of rows
    inserted (conflicting ones are skipped)."""
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} (time timestamptz, lat double precision, lng double precision, "
        "speed real, heading real, accuracy real, altitude real) ON COMMIT DELETE ROWS"
    )
    await conn.copy_to_table(STAGE, source=_chunks(copy_payload(fixes)), format="binary")
    status = await conn.execute(
        "INSERT INTO gps_positions (customer_id, vehicle_id, time, lat, lng, speed, heading, accuracy, altitude, "
        "source) SELECT $1, $2, time, lat, lng, nullif(speed, 'NaN'), nullif(heading, 'NaN'), "
        f"nullif(accuracy, 'NaN'), nullif(altitude, 'NaN'), $3 FROM {STAGE} ON CONFLICT DO NOTHING",
        customer_id,
        vehicle_id,
        source,
    )
    return int(status.rsplit(" ", 1)[-1])


def track_lock_key(customer_id, vehicle_id) -> str:
    """The advisory lock (hashtextextended of this text) of one vehicle's materialization."""
    return f"track:{customer_id}:{vehicle_id}"


async def lock_track(conn: asyncpg.Connection, customer_id, vehicle_id) -> None:
    """Serialise every materialization of one vehicle's fixes until the transaction ends (its stored
    neighbours, geofence events, latest position and document progress are read and written under it)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", track_lock_key(customer_id, vehicle_id))


async def before(conn: asyncpg.Connection, customer_id, vehicle_id, time: dt.datetime) -> asyncpg.Record | None:
    """The vehicle's last stored fix strictly before `time`."""
    return await conn.fetchrow(
        f"SELECT {_FIX} FROM gps_positions WHERE customer_id = $1 AND vehicle_id = $2 AND time < $3 "
        "ORDER BY time DESC LIMIT 1",
        customer_id,
        vehicle_id,
        time,
    )


async def after(conn: asyncpg.Connection, customer_id, vehicle_id, time: dt.datetime) -> asyncpg.Record | None:
    """The vehicle's first stored fix strictly after `time`."""
    return await conn.fetchrow(
        f"SELECT {_FIX} FROM gps_positions WHERE customer_id = $1 AND vehicle_id = $2 AND time > $3 "
        "ORDER BY time LIMIT 1",
        customer_id,
        vehicle_id,
        time,
    )


async def between(
    conn: asyncpg.Connection, customer_id, vehicle_id, first: dt.datetime, last: dt.datetime
) -> list[asyncpg.Record]:
    """The vehicle's stored fixes in [first, last], time-ordered."""
    return await conn.fetch(
        f"SELECT {_FIX} FROM gps_positions WHERE customer_id = $1 AND vehicle_id = $2 AND time >= $3 AND time <= $4 "
        "ORDER BY time",
        customer_id,
        vehicle_id,
        first,
        last,
    )


async def page(
    conn: asyncpg.Connection,
    customer_id,
    vehicle_id,
    start: dt.datetime,
    end: dt.datetime,
    after_time: dt.datetime | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Fixes of one vehicle in [start, end), after `after_time` (keyset cursor), time-ordered."""
    return await conn.fetch(
        f"SELECT {_FIX} FROM gps_positions WHERE customer_id = $1 AND vehicle_id = $2 AND time >= $3 AND time < $4 "
        "AND ($5::timestamptz IS NULL OR time > $5) ORDER BY time LIMIT $6",
        customer_id,
        vehicle_id,
        start,
        end,
        after_time,
        limit,
    )


async def upsert_latest(conn: asyncpg.Connection, customer_id, vehicle_id, fix: Sequence[Any]) -> bool:
    """Record `fix` (time, lat, lng, speed, heading, accuracy, altitude) as the vehicle's latest
    position unless a later one is already known; True when it moved forward."""
    status = await conn.execute(
        "INSERT INTO vehicle_positions_latest (customer_id, vehicle_id, time, lat, lng, speed, heading, accuracy, "
        "altitude) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
        "ON CONFLICT (customer_id, vehicle_id) DO UPDATE SET time = excluded.time, lat = excluded.lat, "
        "lng = excluded.lng, speed = excluded.speed, heading = excluded.heading, accuracy = excluded.accuracy, "
        "altitude = excluded.altitude, updated_at = now() WHERE vehicle_positions_latest.time < excluded.time",
        customer_id,
        vehicle_id,
        *fix,
    )
    return status != "INSERT 0 0"


async def latest_all(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT l.vehicle_id, v.name, v.vehicle_identifier, l.time, l.lat, l.lng, "
        + _float32_as_recorded("speed", "heading", "accuracy", "altitude", table="l.")
        + ", l.updated_at FROM vehicle_positions_latest l JOIN vehicles v ON v.id = l.vehicle_id "
        "ORDER BY v.name, l.vehicle_id"
    )


async def delete_before(conn: asyncpg.Connection, customer_id, cutoff: dt.datetime, limit: int) -> int:
    """Delete up to `limit` of the customer's fixes older than `cutoff` (one retention batch)."""
    status = await conn.execute(
        "DELETE FROM gps_positions p USING (SELECT vehicle_id, time FROM gps_positions "
        "WHERE customer_id = $1 AND time < $2 LIMIT $3) old "
        "WHERE p.customer_id = $1 AND p.vehicle_id = old.vehicle_id AND p.time = old.time AND p.time < $2",
        customer_id,
        cutoff,
        limit,
    )
    return int(status.rsplit(" ", 1)[-1])


async def time_after_page(
    conn: asyncpg.Connection,
    customer_id,
    vehicle_id,
    start: dt.datetime,
    end: dt.datetime,
    after_time: dt.datetime | None,
    limit: int,
) -> dt.datetime | None:
    """The time of the `limit`-th fix of a page when more fixes follow it (the next page's cursor)."""
    rows = await conn.fetch(
        "SELECT time FROM gps_positions WHERE customer_id = $1 AND vehicle_id = $2 AND time >= $3 AND time < $4 "
        "AND ($5::timestamptz IS NULL OR time > $5) ORDER BY time OFFSET $6 LIMIT 2",
        customer_id,
        vehicle_id,
        start,
        end,
        after_time,
        limit - 1,
    )
    return rows[0]["time"] if len(rows) == 2 else None


async def commit_without_waiting_for_flush(conn: asyncpg.Connection) -> None:
    """This transaction's commit returns before its WAL reaches disk. Only for work that is replayed
    from a durable source after a crash (track documents): losing the last commits then costs a
    replay, never a row."""
    await conn.execute("SET LOCAL synchronous_commit = off")
