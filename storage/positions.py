"""gps_positions and vehicle_positions_latest (tenant connections: Database.tenant / set_tenant).

Writes go through a per-session temporary staging table: binary COPY into it, then one
INSERT ... SELECT ... ON CONFLICT DO NOTHING on the (customer_id, vehicle_id, time) key, so a replay
never duplicates a row and a batch costs three round trips whatever its size (one merge per
transaction: the staging table empties at commit). Every query names customer_id although RLS
already scopes it: the policy's OR keeps the planner from using it as an index condition.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Sequence

import asyncpg

STAGE = "gps_positions_stage"
COLUMNS = ("customer_id", "vehicle_id", "time", "lat", "lng", "speed", "heading", "accuracy", "altitude", "source")
_FIX = "time, lat, lng, speed, heading, accuracy, altitude"


async def stage_and_merge(conn: asyncpg.Connection, records: Sequence[tuple]) -> int:
    """COPY `records` (tuples in COLUMNS order) into the staging table and merge them; returns the
    number of rows inserted (conflicting ones are skipped)."""
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} (customer_id uuid, vehicle_id uuid, time timestamptz, "
        "lat double precision, lng double precision, speed real, heading real, accuracy real, altitude real, "
        "source text) ON COMMIT DELETE ROWS"
    )
    await conn.copy_records_to_table(STAGE, records=records, columns=COLUMNS)
    status = await conn.execute(
        f"INSERT INTO gps_positions ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM {STAGE} "
        "ON CONFLICT DO NOTHING"
    )
    return int(status.rsplit(" ", 1)[-1])


async def before(conn: asyncpg.Connection, customer_id, vehicle_id, time: dt.datetime) -> asyncpg.Record | None:
    """The vehicle's last stored fix strictly before `time`."""
    return await conn.fetchrow(
        f"SELECT {_FIX} FROM gps_positions WHERE customer_id = $1 AND vehicle_id = $2 AND time < $3 "
        "ORDER BY time DESC LIMIT 1",
        customer_id, vehicle_id, time)


async def after(conn: asyncpg.Connection, customer_id, vehicle_id, time: dt.datetime) -> asyncpg.Record | None:
    """The vehicle's first stored fix strictly after `time`."""
    return await conn.fetchrow(
        f"SELECT {_FIX} FROM gps_positions WHERE customer_id = $1 AND vehicle_id = $2 AND time > $3 "
        "ORDER BY time LIMIT 1",
        customer_id, vehicle_id, time)


async def between(conn: asyncpg.Connection, customer_id, vehicle_id, first: dt.datetime,
                  last: dt.datetime) -> list[asyncpg.Record]:
    """The vehicle's stored fixes in [first, last], time-ordered."""
    return await conn.fetch(
        f"SELECT {_FIX} FROM gps_positions WHERE customer_id = $1 AND vehicle_id = $2 AND time >= $3 AND time <= $4 "
        "ORDER BY time",
        customer_id, vehicle_id, first, last)


async def page(conn: asyncpg.Connection, customer_id, vehicle_id, start: dt.datetime, end: dt.datetime,
               after_time: dt.datetime | None, limit: int) -> list[asyncpg.Record]:
    """Fixes of one vehicle in [start, end), after `after_time` (keyset cursor), time-ordered."""
    return await conn.fetch(
        f"SELECT {_FIX} FROM gps_positions WHERE customer_id = $1 AND vehicle_id = $2 AND time >= $3 AND time < $4 "
        "AND ($5::timestamptz IS NULL OR time > $5) ORDER BY time LIMIT $6",
        customer_id, vehicle_id, start, end, after_time, limit)


async def upsert_latest(conn: asyncpg.Connection, customer_id, vehicle_id, fix: Sequence[Any]) -> bool:
    """Record `fix` (time, lat, lng, speed, heading, accuracy, altitude) as the vehicle's latest
    position unless a later one is already known; True when it moved forward."""
    status = await conn.execute(
        "INSERT INTO vehicle_positions_latest (customer_id, vehicle_id, time, lat, lng, speed, heading, accuracy, "
        "altitude) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
        "ON CONFLICT (customer_id, vehicle_id) DO UPDATE SET time = excluded.time, lat = excluded.lat, "
        "lng = excluded.lng, speed = excluded.speed, heading = excluded.heading, accuracy = excluded.accuracy, "
        "altitude = excluded.altitude, updated_at = now() WHERE vehicle_positions_latest.time < excluded.time",
        customer_id, vehicle_id, *fix)
    return status != "INSERT 0 0"


async def latest_all(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT l.vehicle_id, v.name, v.vehicle_identifier, l.time, l.lat, l.lng, l.speed, l.heading, l.accuracy, "
        "l.altitude, l.updated_at FROM vehicle_positions_latest l JOIN vehicles v ON v.id = l.vehicle_id "
        "ORDER BY v.name, l.vehicle_id")


async def delete_before(conn: asyncpg.Connection, customer_id, cutoff: dt.datetime, limit: int) -> int:
    """Delete up to `limit` of the customer's fixes older than `cutoff` (one retention batch)."""
    status = await conn.execute(
        "DELETE FROM gps_positions p USING (SELECT vehicle_id, time FROM gps_positions "
        "WHERE customer_id = $1 AND time < $2 LIMIT $3) old "
        "WHERE p.customer_id = $1 AND p.vehicle_id = old.vehicle_id AND p.time = old.time AND p.time < $2",
        customer_id, cutoff, limit)
    return int(status.rsplit(" ", 1)[-1])


async def time_after_page(conn: asyncpg.Connection, customer_id, vehicle_id, start: dt.datetime, end: dt.datetime,
                          after_time: dt.datetime | None, limit: int) -> dt.datetime | None:
    """The time of the `limit`-th fix of a page when more fixes follow it (the next page's cursor)."""
    rows = await conn.fetch(
        "SELECT time FROM gps_positions WHERE customer_id = $1 AND vehicle_id = $2 AND time >= $3 AND time < $4 "
        "AND ($5::timestamptz IS NULL OR time > $5) ORDER BY time OFFSET $6 LIMIT 2",
        customer_id, vehicle_id, start, end, after_time, limit - 1)
    return rows[0]["time"] if len(rows) == 2 else None


async def commit_without_waiting_for_flush(conn: asyncpg.Connection) -> None:
    """This transaction's commit returns before its WAL reaches disk. Only for work that is replayed
    from a durable source after a crash (track documents): losing the last commits then costs a
    replay, never a row."""
    await conn.execute("SET LOCAL synchronous_commit = off")
