"""track_progress: how many elements of each track document's `points` array are materialized
(tenant connections; written in the batch's own transaction)."""

from __future__ import annotations

import asyncpg


async def elements(conn: asyncpg.Connection, customer_id, doc: str) -> int:
    value = await conn.fetchval(
        "SELECT elements FROM track_progress WHERE customer_id = $1 AND doc = $2", customer_id, doc
    )
    return value or 0


async def advance(conn: asyncpg.Connection, customer_id, doc: str, vehicle_id, elements: int) -> None:
    await conn.execute(
        "INSERT INTO track_progress (customer_id, doc, vehicle_id, elements) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (customer_id, doc) DO UPDATE SET elements = greatest(track_progress.elements, excluded.elements), "
        "updated_at = now()",
        customer_id,
        doc,
        vehicle_id,
        elements,
    )
