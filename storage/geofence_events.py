"""geofence_events rows (tenant connections). Events are unique on
(customer_id, vehicle_id, time, geofence_id, event), so recording the same event twice is a no-op.
The table has no foreign keys (migration 0070): whoever writes events first locks their vehicle and
geofences with `lock_parents`, once per batch, and writes only events of the geofences it found."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence

import asyncpg


async def in_window(
    conn: asyncpg.Connection, customer_id, vehicle_id, first: dt.datetime, last: dt.datetime
) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, geofence_id, event, time, lat, lng FROM geofence_events "
        "WHERE customer_id = $1 AND vehicle_id = $2 AND time >= $3 AND time <= $4",
        customer_id,
        vehicle_id,
        first,
        last,
    )


async def delete(conn: asyncpg.Connection, customer_id, ids: Sequence[int]) -> int:
    status = await conn.execute(
        "DELETE FROM geofence_events WHERE customer_id = $1 AND id = ANY($2::bigint[])", customer_id, list(ids)
    )
    return int(status.rsplit(" ", 1)[-1])


async def lock_parents(conn: asyncpg.Connection, customer_id, vehicle_id, geofence_ids: Collection) -> set:
    """Lock the vehicle and these geofences FOR KEY SHARE until the transaction ends (what a
    foreign key check would lock, once for the batch): a concurrent delete waits for it, and its
    trigger then removes the events written here. Returns the ids of the geofences that still
    exist (none if the vehicle is gone)."""
    rows = await conn.fetch(
        "WITH vehicle AS (SELECT id FROM vehicles WHERE customer_id = $1 AND id = $2 FOR KEY SHARE) "
        "SELECT g.id FROM geofences g WHERE g.customer_id = $1 AND g.id = ANY($3::uuid[]) "
        "AND EXISTS (SELECT 1 FROM vehicle) FOR KEY SHARE OF g",
        customer_id,
        vehicle_id,
        list(geofence_ids),
    )
    return {r["id"] for r in rows}


async def insert(
    conn: asyncpg.Connection,
    customer_id,
    vehicle_id,
    geofence_ids: Sequence,
    events: Sequence[str],
    times: Sequence[dt.datetime],
    lats: Sequence[float],
    lngs: Sequence[float],
) -> list[asyncpg.Record]:
    """Insert events given column-wise; returns the new ones (id, geofence_id, event, time, lat, lng)."""
    return await conn.fetch(
        "INSERT INTO geofence_events (customer_id, vehicle_id, geofence_id, event, time, lat, lng) "
        "SELECT $1, $2, g, e, t, la, ln FROM unnest($3::uuid[], $4::text[], $5::timestamptz[], "
        "$6::double precision[], $7::double precision[]) AS u(g, e, t, la, ln) ON CONFLICT DO NOTHING "
        "RETURNING id, geofence_id, event, time, lat, lng",
        customer_id,
        vehicle_id,
        list(geofence_ids),
        list(events),
        list(times),
        list(lats),
        list(lngs),
    )


async def page(
    conn: asyncpg.Connection,
    customer_id,
    *,
    vehicle_id=None,
    geofence_id=None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    after: tuple[dt.datetime, int] | None = None,
    limit: int = 100,
) -> list[asyncpg.Record]:
    """Events time-ordered (ties by id), filtered, after a (time, id) keyset cursor."""
    after_time, after_id = after if after else (None, None)
    return await conn.fetch(
        "SELECT e.id, e.vehicle_id, e.geofence_id, g.name AS geofence_name, e.event, e.time, e.lat, e.lng "
        "FROM geofence_events e JOIN geofences g ON g.id = e.geofence_id "
        "WHERE e.customer_id = $1 AND ($2::uuid IS NULL OR e.vehicle_id = $2) "
        "AND ($3::uuid IS NULL OR e.geofence_id = $3) "
        "AND ($4::timestamptz IS NULL OR e.time >= $4) AND ($5::timestamptz IS NULL OR e.time < $5) "
        "AND ($6::timestamptz IS NULL OR (e.time, e.id) > ($6, $7::bigint)) "
        "ORDER BY e.time, e.id LIMIT $8",
        customer_id,
        vehicle_id,
        geofence_id,
        start,
        end,
        after_time,
        after_id,
        limit,
    )


async def delete_before(conn: asyncpg.Connection, customer_id, cutoff: dt.datetime, limit: int) -> int:
    return await delete_events_before(conn, "geofence_events", customer_id, cutoff, limit)


async def delete_events_before(
    conn: asyncpg.Connection, table: str, customer_id, cutoff: dt.datetime, limit: int
) -> int:
    """Retention of an event table keyed (customer_id, id) with a `time`: up to `limit` rows older
    than `cutoff` (geofence_events, fleet_events)."""
    assert table in ("geofence_events", "fleet_events")
    status = await conn.execute(
        f"DELETE FROM {table} WHERE customer_id = $1 AND id IN (SELECT id FROM {table} "
        "WHERE customer_id = $1 AND time < $2 LIMIT $3)",
        customer_id,
        cutoff,
        limit,
    )
    return int(status.rsplit(" ", 1)[-1])
