"""Day partitions of gps_positions and usage_metrics (the native path; with TimescaleDB the SQL
functions return 0 and the extension's own chunks and retention policy apply).

Partitions are made ahead of time and on demand for backfilled days; whole days past the longest
plan retention are dropped (per-customer retention inside a kept day is the retention job's).
"""

from __future__ import annotations

import datetime as dt

from .database import Database

DAY_PARTITIONED = ("gps_positions", "usage_metrics")


async def ensure(db: Database, first: dt.date, last: dt.date) -> int:
    """Make sure every day in [first, last] has its partition; returns how many were created."""
    created = 0
    async with db.platform() as conn:
        for table in DAY_PARTITIONED:
            created += await conn.fetchval("SELECT webhost_ensure_day_partitions($1, $2, $3)", table, first, last)
    return created


async def longest_retention_days(db: Database) -> int:
    async with db.platform() as conn:
        return await conn.fetchval("SELECT coalesce(max(retention_days), 730) FROM plans")


async def drop_expired(db: Database, today: dt.date | None = None) -> int:
    """Drop whole day partitions older than the longest plan retention."""
    today = today or dt.datetime.now(dt.UTC).date()
    cutoff = today - dt.timedelta(days=await longest_retention_days(db))
    dropped = 0
    async with db.platform() as conn:
        for table in DAY_PARTITIONED:
            dropped += await conn.fetchval("SELECT webhost_drop_day_partitions_before($1, $2)", table, cutoff)
    return dropped


async def maintain(db: Database, days_ahead: int, today: dt.date | None = None) -> tuple[int, int]:
    """The periodic job: partitions for yesterday .. today+days_ahead, and expired ones dropped."""
    today = today or dt.datetime.now(dt.UTC).date()
    created = await ensure(db, today - dt.timedelta(days=1), today + dt.timedelta(days=days_ahead))
    dropped = await drop_expired(db, today)
    return created, dropped


async def list_partitions(db: Database, table: str) -> list[str]:
    async with db.platform() as conn:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1 ORDER BY c.relname",
            table,
        )
    return [r["relname"] for r in rows]
