"""What a customer uses: counts of plan-limited resources, GPS points today, document storage; and
the per-customer lock that makes count-then-insert race-free (tenant connections)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import asyncpg

from .database import TENANT_ROWS

# One fixed query per countable resource (no string-built SQL); TENANT_ROWS lets the count use the
# customer_id index instead of scanning every tenant's rows.
_COUNT = {
    "vehicles": f"SELECT count(*) FROM vehicles WHERE {TENANT_ROWS}",
    "drivers": f"SELECT count(*) FROM drivers WHERE {TENANT_ROWS}",
    "geofences": f"SELECT count(*) FROM geofences WHERE {TENANT_ROWS}",
}
COUNTABLE = tuple(_COUNT)


def quota_lock_key(customer_id, resource: str) -> str:
    """The advisory lock that serialises count-then-create of `resource` for one customer. The same
    text is built in SQL by webhost_quota_count (migration 0160): change both or neither
    (tests/test_counting_insert.py fails when they differ)."""
    return f"quota:{customer_id}:{resource}"


async def lock_quota(conn: asyncpg.Connection, customer_id, resource: str) -> None:
    """Serialise every count-then-create of `resource` for this customer until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", quota_lock_key(customer_id, resource))


async def count(conn: asyncpg.Connection, resource: str) -> int:
    return await conn.fetchval(_COUNT[resource])


async def gps_points_today(conn: asyncpg.Connection, metric: str) -> int:
    """Points recorded today (UTC): the usage_metrics counter when the pipeline keeps one, otherwise
    the rows of today's gps_positions."""
    return await conn.fetchval(
        "SELECT coalesce((SELECT sum(value) FROM usage_metrics WHERE metric = $1 "
        "  AND time >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'), "
        " (SELECT count(*) FROM gps_positions "
        "  WHERE time >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'))::bigint",
        metric,
    )


async def document_bytes(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(
        "SELECT (SELECT coalesce(sum(octet_length(update)), 0) FROM doc_updates) "
        "     + (SELECT coalesce(sum(octet_length(state)), 0) FROM doc_snapshots)"
    )


# --- usage_metrics counters: one row per (customer, metric, UTC day), added to atomically ------
def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


async def add(conn: asyncpg.Connection, customer_id, counts: Iterable[tuple[dt.date, str, int]]) -> None:
    """Add each (day, metric, n) to its counter."""
    rows = [(_midnight(day), metric, n) for day, metric, n in counts if n]
    if not rows:
        return
    await conn.execute(
        "INSERT INTO usage_metrics (customer_id, time, metric, value) "
        "SELECT $1, t, m, v FROM unnest($2::timestamptz[], $3::text[], $4::bigint[]) AS u(t, m, v) "
        "ON CONFLICT (customer_id, metric, time) DO UPDATE SET value = usage_metrics.value + excluded.value",
        customer_id,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
    )


async def values(conn: asyncpg.Connection, customer_id, metric: str, days: Sequence[dt.date]) -> dict[dt.date, int]:
    rows = await conn.fetch(
        "SELECT time, value FROM usage_metrics WHERE customer_id = $1 AND metric = $2 AND time = ANY($3::timestamptz[])",
        customer_id,
        metric,
        [_midnight(d) for d in days],
    )
    return {r["time"].astimezone(dt.UTC).date(): r["value"] for r in rows}


async def of_day(conn: asyncpg.Connection, customer_id, day: dt.date, prefix: str) -> dict[str, int]:
    """Every metric of one day whose name starts with `prefix`."""
    rows = await conn.fetch(
        "SELECT metric, value FROM usage_metrics WHERE customer_id = $1 AND time = $2 AND starts_with(metric, $3)",
        customer_id,
        _midnight(day),
        prefix,
    )
    return {r["metric"]: r["value"] for r in rows}
