"""track_progress: how many elements of each track document's `points` array are materialized
(tenant connections; written in the batch's own transaction)."""

from __future__ import annotations

import asyncpg


async def elements(conn: asyncpg.Connection, customer_id, doc: str) -> int:
    value = await conn.fetchval(
        "SELECT elements FROM track_progress WHERE customer_id = $1 AND doc = $2", customer_id, doc
    )
    return value or 0


async def advance(
    conn: asyncpg.Connection,
    customer_id,
    doc: str,
    vehicle_id,
    elements: int,
    stored: int = 0,
    rejected: dict[str, int] | None = None,
) -> asyncpg.Record:
    """Move the progress forward and add the batch's stored and rejected counts (the caller holds
    the vehicle's track lock: a batch is counted once). Returns the totals (`feedback` columns)."""
    return await conn.fetchrow(
        "INSERT INTO track_progress AS p (customer_id, doc, vehicle_id, elements, stored, rejected) "
        "VALUES ($1, $2, $3, $4, $5, $6) "
        "ON CONFLICT (customer_id, doc) DO UPDATE SET elements = greatest(p.elements, excluded.elements), "
        "stored = p.stored + excluded.stored, "
        "rejected = (SELECT coalesce(jsonb_object_agg(k, n), '{}'::jsonb) FROM (SELECT k, sum(v::bigint) AS n "
        "FROM (SELECT key AS k, value AS v FROM jsonb_each_text(p.rejected) "
        "UNION ALL SELECT key, value FROM jsonb_each_text(excluded.rejected)) AS parts GROUP BY k) AS sums), "
        "updated_at = now() RETURNING elements, stored, rejected",
        customer_id,
        doc,
        vehicle_id,
        elements,
        stored,
        rejected or {},
    )


async def feedback(conn: asyncpg.Connection, customer_id, doc: str) -> asyncpg.Record | None:
    """(elements, stored, rejected) of one track document, or None before its first batch."""
    return await conn.fetchrow(
        "SELECT elements, stored, rejected FROM track_progress WHERE customer_id = $1 AND doc = $2", customer_id, doc
    )
