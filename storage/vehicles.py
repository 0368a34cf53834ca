"""vehicles rows (tenant data: pass a connection from `registry.for_customer(cid).tenant(cid)`)."""

from __future__ import annotations

import asyncpg

from .database import TENANT_ROWS
from .usage import count_query

_COLUMNS = "id, customer_id, name, vehicle_identifier, vehicle_type, metadata, created_at, updated_at"


async def insert(
    conn: asyncpg.Connection,
    customer_id,
    *,
    name: str,
    vehicle_identifier: str,
    vehicle_type: str,
    metadata: dict,
    device_secret_hash: bytes,
    limit: int,
) -> asyncpg.Record | None:
    """A new vehicle, only while the customer has fewer than `limit` (counted by the same statement,
    so after the caller's quota lock: PlanLimits.insert_within_limit); None when the limit is reached."""
    return await conn.fetchrow(
        "INSERT INTO vehicles (customer_id, name, vehicle_identifier, vehicle_type, metadata, device_secret_hash) "
        "SELECT $1::uuid, $2::text, $3::text, $4::text, $5::jsonb, $6::bytea "
        f"WHERE ({count_query('vehicles')}) < $7 RETURNING {_COLUMNS}",
        customer_id,
        name,
        vehicle_identifier,
        vehicle_type,
        metadata,
        device_secret_hash,
        limit,
    )


async def list_page(
    conn: asyncpg.Connection, *, vehicle_type: str | None, after: tuple, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM vehicles WHERE {TENANT_ROWS} AND ($1::text IS NULL OR vehicle_type = $1) "
        "AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid)) ORDER BY created_at, id LIMIT $4",
        vehicle_type,
        after[0],
        after[1],
        limit + 1,
    )


async def get(conn: asyncpg.Connection, vehicle_id, *, for_update: bool = False) -> asyncpg.Record | None:
    if for_update:
        return await conn.fetchrow(f"SELECT {_COLUMNS} FROM vehicles WHERE id = $1 FOR UPDATE", vehicle_id)
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM vehicles WHERE id = $1", vehicle_id)


async def exists(conn: asyncpg.Connection, vehicle_id) -> bool:
    return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM vehicles WHERE id = $1)", vehicle_id)


async def update(
    conn: asyncpg.Connection, vehicle_id, *, name: str, vehicle_identifier: str, vehicle_type: str, metadata: dict
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE vehicles SET name = $2, vehicle_identifier = $3, vehicle_type = $4, metadata = $5, updated_at = now() "
        f"WHERE id = $1 RETURNING {_COLUMNS}",
        vehicle_id,
        name,
        vehicle_identifier,
        vehicle_type,
        metadata,
    )


async def set_device_secret_hash(
    conn: asyncpg.Connection, vehicle_id, device_secret_hash: bytes
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"UPDATE vehicles SET device_secret_hash = $2, updated_at = now() WHERE id = $1 RETURNING {_COLUMNS}",
        vehicle_id,
        device_secret_hash,
    )


async def delete(conn: asyncpg.Connection, vehicle_id) -> asyncpg.Record | None:
    """Delete the vehicle; its (id, vehicle_identifier), or None when there was none."""
    return await conn.fetchrow("DELETE FROM vehicles WHERE id = $1 RETURNING id, vehicle_identifier", vehicle_id)


async def tracker(
    conn: asyncpg.Connection, customer_id, *, vehicle_id=None, identifier: str | None = None
) -> asyncpg.Record | None:
    """A vehicle by id or by vehicle_identifier, with its device secret hash (tracker ingestion)."""
    return await conn.fetchrow(
        "SELECT id, name, vehicle_identifier, device_secret_hash FROM vehicles WHERE customer_id = $1 "
        "AND (($2::uuid IS NOT NULL AND id = $2) OR ($3::text IS NOT NULL AND vehicle_identifier = $3))",
        customer_id,
        vehicle_id,
        identifier,
    )
