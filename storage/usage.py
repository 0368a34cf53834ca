"""What a customer uses: counts of plan-limited resources, GPS points today, document storage; and
the per-customer lock that makes count-then-insert race-free (tenant connections)."""
from __future__ import annotations

import asyncpg

# One fixed query per countable resource (no string-built SQL).
_COUNT = {
    "vehicles": "SELECT count(*) FROM vehicles",
    "drivers": "SELECT count(*) FROM drivers",
    "geofences": "SELECT count(*) FROM geofences",
}
COUNTABLE = tuple(_COUNT)


async def lock_quota(conn: asyncpg.Connection, customer_id, resource: str) -> None:
    """Serialise every count-then-create of `resource` for this customer until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"quota:{customer_id}:{resource}")


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
        "     + (SELECT coalesce(sum(octet_length(state)), 0) FROM doc_snapshots)")

