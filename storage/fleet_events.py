"""fleet_events, trips, stops, motion_state and tracking_settings (tenant connections; the pipeline
writes them under the vehicle's track lock, in its transaction). Every query names customer_id
although RLS already scopes it (the planner then uses it as an index condition)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from storage.geofence_events import delete_events_before

_EVENT = "id, vehicle_id, type, time, lat, lng, data, decided_ms"


# --- settings ---------------------------------------------------------------------------------


async def settings_of(conn: asyncpg.Connection, customer_id, vehicle_id=None) -> tuple[dict, Any, bool]:
    """(the customer's settings, the vehicle's metadata speed_limit_kmh or None, whether the vehicle
    exists). The vehicle is locked FOR KEY SHARE until the transaction ends (the rows written for it
    reference it: a concurrent delete waits, and its cascade then takes them along)."""
    row = await conn.fetchrow(
        "WITH v AS (SELECT metadata FROM vehicles WHERE customer_id = $1 AND id = $2 FOR KEY SHARE) "
        "SELECT (SELECT settings FROM tracking_settings WHERE customer_id = $1) AS settings, "
        "(SELECT metadata -> 'speed_limit_kmh' FROM v) AS limit, EXISTS (SELECT 1 FROM v) AS found",
        customer_id,
        vehicle_id,
    )
    return (row["settings"] or {}), row["limit"], row["found"]


async def put_settings(conn: asyncpg.Connection, customer_id, settings: dict) -> None:
    await conn.execute(
        "INSERT INTO tracking_settings (customer_id, settings) VALUES ($1, $2) "
        "ON CONFLICT (customer_id) DO UPDATE SET settings = excluded.settings, updated_at = now()",
        customer_id,
        settings,
    )


async def speed_zones(conn: asyncpg.Connection, customer_id) -> list[asyncpg.Record]:
    """Active geofences with a speed limit in their metadata."""
    return await conn.fetch(
        "SELECT id, kind, center_lat, center_lng, radius_meters, polygon, metadata -> 'speed_limit_kmh' AS limit "
        "FROM geofences WHERE customer_id = $1 AND active AND jsonb_typeof(metadata -> 'speed_limit_kmh') = 'number' "
        "ORDER BY id",
        customer_id,
    )


# --- analysis state ---------------------------------------------------------------------------


async def motion_state(conn: asyncpg.Connection, customer_id, vehicle_id) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT last_ms, state, offline_ms FROM motion_state WHERE customer_id = $1 AND vehicle_id = $2",
        customer_id,
        vehicle_id,
    )


async def save_state(conn: asyncpg.Connection, customer_id, vehicle_id, last_ms: int, state: str, offline_ms) -> None:
    await conn.execute(
        "INSERT INTO motion_state (customer_id, vehicle_id, last_ms, state, offline_ms) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (customer_id, vehicle_id) DO UPDATE SET last_ms = excluded.last_ms, state = excluded.state, "
        "offline_ms = excluded.offline_ms, updated_at = now()",
        customer_id,
        vehicle_id,
        last_ms,
        state,
        offline_ms,
    )


async def mark_offline(conn: asyncpg.Connection, customer_id, vehicle_id, offline_ms: int) -> None:
    await conn.execute(
        "UPDATE motion_state SET offline_ms = $3, updated_at = now() WHERE customer_id = $1 AND vehicle_id = $2",
        customer_id,
        vehicle_id,
        offline_ms,
    )


async def silent_since(conn: asyncpg.Connection, before_ms: int, limit: int) -> list[asyncpg.Record]:
    """Vehicles (any customer: operator scope) whose last fix is older than `before_ms` and whose open
    gap has no device.offline yet, with their customer's settings."""
    return await conn.fetch(
        "SELECT m.customer_id, m.vehicle_id, m.last_ms, s.settings FROM motion_state m "
        "LEFT JOIN tracking_settings s ON s.customer_id = m.customer_id "
        "WHERE m.offline_ms IS NULL AND m.last_ms < $1 ORDER BY m.last_ms LIMIT $2",
        before_ms,
        limit,
    )


async def checkpoint_before(conn: asyncpg.Connection, customer_id, vehicle_id, ms: int) -> asyncpg.Record | None:
    """The last stop confirmed by a fix before `ms` (the analysis restarts from its state)."""
    return await conn.fetchrow(
        "SELECT start_time, confirmed_ms, state FROM stops WHERE customer_id = $1 AND vehicle_id = $2 "
        "AND confirmed_ms < $3 ORDER BY confirmed_ms DESC LIMIT 1",
        customer_id,
        vehicle_id,
        ms,
    )


async def checkpoints_between(
    conn: asyncpg.Connection, customer_id, vehicle_id, after_ms: int, until_ms: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT start_time, confirmed_ms, state FROM stops WHERE customer_id = $1 AND vehicle_id = $2 "
        "AND confirmed_ms > $3 AND confirmed_ms <= $4",
        customer_id,
        vehicle_id,
        after_ms,
        until_ms,
    )


# --- events -----------------------------------------------------------------------------------


async def decided_between(
    conn: asyncpg.Connection, customer_id, vehicle_id, after_ms: int | None, until_ms: int | None, open_gap: bool
) -> list[asyncpg.Record]:
    """The vehicle's events decided by fixes in (after_ms, until_ms] (None: unbounded), plus those
    decided on server time when `open_gap`."""
    return await conn.fetch(
        f"SELECT {_EVENT} FROM fleet_events WHERE customer_id = $1 AND vehicle_id = $2 AND ("
        "(decided_ms IS NOT NULL AND ($3::bigint IS NULL OR decided_ms > $3) AND ($4::bigint IS NULL OR decided_ms <= $4)) "
        "OR ($5 AND decided_ms IS NULL))",
        customer_id,
        vehicle_id,
        after_ms,
        until_ms,
        open_gap,
    )


async def insert_events(conn: asyncpg.Connection, customer_id, vehicle_id, rows: Sequence[tuple]) -> list[int]:
    """rows: (type, time, lat, lng, data, decided_ms); returns their ids in order."""
    if not rows:
        return []
    records = await conn.fetch(
        "INSERT INTO fleet_events (customer_id, vehicle_id, type, time, lat, lng, data, decided_ms) "
        "SELECT $1, $2, u.type, u.time, u.lat, u.lng, u.data::jsonb, u.decided FROM unnest($3::text[], "
        "$4::timestamptz[], $5::double precision[], $6::double precision[], $7::text[], $8::bigint[]) WITH ORDINALITY "
        "AS u(type, time, lat, lng, data, decided, n) ORDER BY u.n RETURNING id",
        customer_id,
        vehicle_id,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        [json.dumps(r[4], allow_nan=False) for r in rows],
        [r[5] for r in rows],
    )
    return [r["id"] for r in records]


async def redecide(conn: asyncpg.Connection, customer_id, ids: Sequence[int], decided: Sequence[int | None]) -> None:
    if ids:
        await conn.execute(
            "UPDATE fleet_events e SET decided_ms = u.d FROM unnest($2::bigint[], $3::bigint[]) AS u(id, d) "
            "WHERE e.customer_id = $1 AND e.id = u.id",
            customer_id,
            list(ids),
            list(decided),
        )


async def delete_events(conn: asyncpg.Connection, customer_id, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute(
            "DELETE FROM fleet_events WHERE customer_id = $1 AND id = ANY($2::bigint[])", customer_id, list(ids)
        )


async def insert_customer_event(
    conn: asyncpg.Connection, customer_id, type: str, time: dt.datetime, data: dict
) -> int | None:
    """A customer-wide event once per (type, time); its id, or None when it was already recorded."""
    return await conn.fetchval(
        "INSERT INTO fleet_events (customer_id, type, time, data) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (customer_id, type, time) WHERE vehicle_id IS NULL DO NOTHING RETURNING id",
        customer_id,
        type,
        time,
        data,
    )


# --- trips and stops --------------------------------------------------------------------------

_TRIP_COLUMNS = (
    "start_time, end_time, start_lat, start_lng, end_lat, end_lng, distance_m, duration_s, max_speed, avg_speed, path"
)
_STOP_COLUMNS = "start_time, end_time, lat, lng, duration_s, confirmed_ms, state"


async def replace_segments(
    conn: asyncpg.Connection,
    customer_id,
    vehicle_id,
    table: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    rows: Sequence[tuple],
) -> None:
    """Rows of `table` ("trips" | "stops") starting in [since, until) become `rows` (tuples in the
    table's column order): the others in the range go, these are upserted (a stop keeps its
    checkpoint state when the row brings none: None)."""
    assert table in ("trips", "stops")
    columns = _TRIP_COLUMNS if table == "trips" else _STOP_COLUMNS
    names = columns.split(", ")
    starts = [r[0] for r in rows]
    await conn.execute(
        f"DELETE FROM {table} WHERE customer_id = $1 AND vehicle_id = $2 "
        "AND ($3::timestamptz IS NULL OR start_time >= $3) AND ($4::timestamptz IS NULL OR start_time < $4) "
        "AND NOT start_time = ANY($5::timestamptz[])",
        customer_id,
        vehicle_id,
        since,
        until,
        starts,
    )
    if not rows:
        return
    types = (
        "timestamptz timestamptz float8 float8 float8 float8 float8 float8 float8 float8 text"
        if table == "trips"
        else "timestamptz timestamptz float8 float8 float8 int8 text"
    ).split()
    arrays = ", ".join(f"${i + 3}::{t}[]" for i, t in enumerate(types))
    picked = ", ".join(f"u.{n}::jsonb" if n == "path" else f"u.{n}" for n in names)
    updates = ", ".join(
        f"{n} = coalesce(nullif(excluded.{n}, ''), {table}.{n})" if n == "state" else f"{n} = excluded.{n}"
        for n in names[1:]
    )
    await conn.execute(
        f"INSERT INTO {table} (customer_id, vehicle_id, {columns}) SELECT $1, $2, {picked} "
        f"FROM unnest({arrays}) AS u({columns}) "
        f"ON CONFLICT (customer_id, vehicle_id, start_time) DO UPDATE SET {updates}",
        customer_id,
        vehicle_id,
        *[[_column(n, r[i]) for r in rows] for i, n in enumerate(names)],
    )


def _column(name: str, value: Any) -> Any:
    if name == "path":
        return json.dumps(value, allow_nan=False)
    if name == "state" and value is None:
        return ""  # keep the stored one (never inserted: a stop's first row always has its state)
    return value


# --- reports ----------------------------------------------------------------------------------


async def trips_page(
    conn: asyncpg.Connection, customer_id, vehicle_id, start: dt.datetime, end: dt.datetime, after, limit: int
) -> list[asyncpg.Record]:
    """Trips starting in [start, end), by (start_time, vehicle_id), after a keyset cursor."""
    return await _segments(conn, "trips", _TRIP_COLUMNS, customer_id, vehicle_id, start, end, after, limit)


async def stops_page(
    conn: asyncpg.Connection, customer_id, vehicle_id, start: dt.datetime, end: dt.datetime, after, limit: int
) -> list[asyncpg.Record]:
    return await _segments(
        conn, "stops", "start_time, end_time, lat, lng, duration_s", customer_id, vehicle_id, start, end, after, limit
    )


async def _segments(conn, table, columns, customer_id, vehicle_id, start, end, after, limit):
    after_time, after_vehicle = after if after else (None, None)
    return await conn.fetch(
        f"SELECT vehicle_id, {columns} FROM {table} WHERE customer_id = $1 AND ($2::uuid IS NULL OR vehicle_id = $2) "
        "AND start_time >= $3 AND start_time < $4 "
        "AND ($5::timestamptz IS NULL OR (start_time, vehicle_id) > ($5, $6::uuid)) "
        "ORDER BY start_time, vehicle_id LIMIT $7",
        customer_id,
        vehicle_id,
        start,
        end,
        after_time,
        after_vehicle,
        limit,
    )


async def events_page(
    conn: asyncpg.Connection,
    customer_id,
    *,
    vehicle_id=None,
    types: Sequence[str] | None = None,
    start: dt.datetime,
    end: dt.datetime,
    after: tuple[dt.datetime, int] | None,
    limit: int,
) -> list[asyncpg.Record]:
    after_time, after_id = after if after else (None, None)
    return await conn.fetch(
        f"SELECT {_EVENT} FROM fleet_events WHERE customer_id = $1 AND ($2::uuid IS NULL OR vehicle_id = $2) "
        "AND ($3::text[] IS NULL OR type = ANY($3)) AND time >= $4 AND time < $5 "
        "AND ($6::timestamptz IS NULL OR (time, id) > ($6, $7::bigint)) ORDER BY time, id LIMIT $8",
        customer_id,
        vehicle_id,
        list(types) if types else None,
        start,
        end,
        after_time,
        after_id,
        limit,
    )


async def summary(
    conn: asyncpg.Connection, customer_id, vehicle_id, start: dt.datetime, end: dt.datetime, overspeed: str
) -> list[asyncpg.Record]:
    """Per vehicle over [start, end): trips' distance, moving time, max speed; stops' time (both
    clipped to the range, open ones up to their last fix); overspeed events. From the rows only."""
    return await conn.fetch(
        "WITH t AS (SELECT vehicle_id, sum(distance_m * CASE WHEN duration_s > 0 THEN "
        "  greatest(0, extract(epoch FROM least(coalesce(end_time, start_time + duration_s * interval '1 second'), $4) "
        "  - greatest(start_time, $3))) / duration_s ELSE 1 END) AS distance_m, "
        "  sum(greatest(0, extract(epoch FROM least(coalesce(end_time, start_time + duration_s * interval '1 second'), $4) "
        "  - greatest(start_time, $3)))) AS moving_s, max(max_speed) AS max_speed, count(*) AS trips "
        "  FROM trips WHERE customer_id = $1 AND ($2::uuid IS NULL OR vehicle_id = $2) "
        "  AND start_time < $4 AND (end_time IS NULL OR end_time > $3) AND start_time > $3 - interval '31 days' "
        "  GROUP BY vehicle_id), "
        "s AS (SELECT vehicle_id, sum(greatest(0, extract(epoch FROM "
        "  least(coalesce(end_time, start_time + duration_s * interval '1 second'), $4) - greatest(start_time, $3)))) "
        "  AS stopped_s, count(*) AS stops FROM stops WHERE customer_id = $1 AND ($2::uuid IS NULL OR vehicle_id = $2) "
        "  AND start_time < $4 AND (end_time IS NULL OR end_time > $3) AND start_time > $3 - interval '31 days' "
        "  GROUP BY vehicle_id), "
        "o AS (SELECT vehicle_id, count(*) AS overspeed FROM fleet_events WHERE customer_id = $1 "
        "  AND ($2::uuid IS NULL OR vehicle_id = $2) AND type = $5 AND time >= $3 AND time < $4 GROUP BY vehicle_id) "
        "SELECT v.id AS vehicle_id, v.name, coalesce(t.distance_m, 0)::float8 AS distance_m, "
        "coalesce(t.moving_s, 0)::float8 AS moving_s, coalesce(s.stopped_s, 0)::float8 AS stopped_s, t.max_speed, "
        "coalesce(t.trips, 0) AS trips, "
        "coalesce(s.stops, 0) AS stops, coalesce(o.overspeed, 0) AS overspeed "
        "FROM vehicles v LEFT JOIN t ON t.vehicle_id = v.id LEFT JOIN s ON s.vehicle_id = v.id "
        "LEFT JOIN o ON o.vehicle_id = v.id WHERE v.customer_id = $1 AND ($2::uuid IS NULL OR v.id = $2) "
        "ORDER BY v.name, v.id",
        customer_id,
        vehicle_id,
        start,
        end,
        overspeed,
    )


async def delete_before(conn: asyncpg.Connection, customer_id, cutoff: dt.datetime, limit: int) -> int:
    """Retention: up to `limit` of the customer's events older than `cutoff`."""
    return await delete_events_before(conn, "fleet_events", customer_id, cutoff, limit)


async def delete_trips_before(conn: asyncpg.Connection, customer_id, cutoff: dt.datetime, limit: int) -> int:
    """Retention: up to `limit` closed trips that ended before `cutoff`."""
    return await _delete_segments(conn, "trips", customer_id, cutoff, limit)


async def delete_stops_before(conn: asyncpg.Connection, customer_id, cutoff: dt.datetime, limit: int) -> int:
    """Retention: up to `limit` closed stops that ended before `cutoff` (their checkpoints go with
    them: a fix that old is refused as too_old, so no backfill restarts from them)."""
    return await _delete_segments(conn, "stops", customer_id, cutoff, limit)


async def _delete_segments(conn: asyncpg.Connection, table: str, customer_id, cutoff: dt.datetime, limit: int) -> int:
    assert table in ("trips", "stops")
    status = await conn.execute(
        f"DELETE FROM {table} s USING (SELECT vehicle_id, start_time FROM {table} WHERE customer_id = $1 "
        "AND start_time < $2 AND end_time < $2 LIMIT $3) old WHERE s.customer_id = $1 "
        "AND s.vehicle_id = old.vehicle_id AND s.start_time = old.start_time",
        customer_id,
        cutoff,
        limit,
    )
    return int(status.rsplit(" ", 1)[-1])
