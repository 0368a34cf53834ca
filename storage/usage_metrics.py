"""usage_metrics counters: one row per (customer, metric, UTC day), added to atomically."""
from __future__ import annotations

import datetime as dt
from typing import Iterable, Sequence

import asyncpg


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)


async def add(conn: asyncpg.Connection, customer_id, counts: Iterable[tuple[dt.date, str, int]]) -> None:
    """Add each (day, metric, n) to its counter."""
    rows = [(_midnight(day), metric, n) for day, metric, n in counts if n]
    if not rows:
        return
    await conn.execute(
        "INSERT INTO usage_metrics (customer_id, time, metric, value) "
        "SELECT $1, t, m, v FROM unnest($2::timestamptz[], $3::text[], $4::bigint[]) AS u(t, m, v) "
        "ON CONFLICT (customer_id, metric, time) DO UPDATE SET value = usage_metrics.value + excluded.value",
        customer_id, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


async def values(conn: asyncpg.Connection, customer_id, metric: str, days: Sequence[dt.date]) -> dict[dt.date, int]:
    rows = await conn.fetch(
        "SELECT time, value FROM usage_metrics WHERE customer_id = $1 AND metric = $2 AND time = ANY($3::timestamptz[])",
        customer_id, metric, [_midnight(d) for d in days])
    return {r["time"].astimezone(dt.timezone.utc).date(): r["value"] for r in rows}


async def of_day(conn: asyncpg.Connection, customer_id, day: dt.date, prefix: str) -> dict[str, int]:
    """Every metric of one day whose name starts with `prefix`."""
    rows = await conn.fetch(
        "SELECT metric, value FROM usage_metrics WHERE customer_id = $1 AND time = $2 AND starts_with(metric, $3)",
        customer_id, _midnight(day), prefix)
    return {r["metric"]: r["value"] for r in rows}


async def lock_points_quota(conn: asyncpg.Connection, customer_id) -> None:
    """Serialise the customer's GPS batches until the transaction ends (quota read-then-add, and the
    per-vehicle sequence and geofence windows)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                       f"quota:{customer_id}:gps_points_per_day")
