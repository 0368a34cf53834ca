"""geofences rows (tenant data). Geometry arrives validated, with its bounding box computed."""

from __future__ import annotations

import asyncpg

from .database import SCOPE_SET, SCOPED_FROM, TENANT_ROWS, Database

_COLUMNS = (
    "id, customer_id, name, kind, center_lat, center_lng, radius_meters, polygon, min_lat, min_lng, max_lat, "
    "max_lng, active, metadata, created_at, updated_at"
)
FIELDS = (
    "name",
    "kind",
    "center_lat",
    "center_lng",
    "radius_meters",
    "polygon",
    "min_lat",
    "min_lng",
    "max_lat",
    "max_lng",
    "active",
    "metadata",
)


async def insert(conn: asyncpg.Connection, customer_id, values: dict) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO geofences (customer_id, name, kind, center_lat, center_lng, radius_meters, polygon, min_lat, "
        "min_lng, max_lat, max_lng, active, metadata) "
        f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING {_COLUMNS}",
        customer_id,
        *(values[f] for f in FIELDS),
    )


_PAGE = (
    f"SELECT page.* FROM {SCOPED_FROM} (SELECT {_COLUMNS} FROM geofences WHERE {SCOPE_SET} AND {TENANT_ROWS} "
    "AND ($2::boolean IS NULL OR active = $2) AND ($3::text IS NULL OR kind = $3) "
    "AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5::uuid)) ORDER BY created_at, id LIMIT $6) AS page "
    "ORDER BY page.created_at, page.id"
)


async def list_page(
    db: Database, customer_id, *, active: bool | None, kind: str | None, after: tuple, limit: int
) -> list[asyncpg.Record]:
    """One page of the customer's geofences (and one more row) in one round trip (a self-scoping read)."""
    return await db.tenant_read(customer_id, _PAGE, active, kind, after[0], after[1], limit + 1)


async def get(conn: asyncpg.Connection, geofence_id, *, for_update: bool = False) -> asyncpg.Record | None:
    if for_update:
        return await conn.fetchrow(f"SELECT {_COLUMNS} FROM geofences WHERE id = $1 FOR UPDATE", geofence_id)
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM geofences WHERE id = $1", geofence_id)


async def update(conn: asyncpg.Connection, geofence_id, values: dict) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE geofences SET name = $2, kind = $3, center_lat = $4, center_lng = $5, radius_meters = $6, "
        "polygon = $7, min_lat = $8, min_lng = $9, max_lat = $10, max_lng = $11, active = $12, metadata = $13, "
        f"updated_at = now() WHERE id = $1 RETURNING {_COLUMNS}",
        geofence_id,
        *(values[f] for f in FIELDS),
    )


async def delete(conn: asyncpg.Connection, geofence_id) -> bool:
    return await conn.execute("DELETE FROM geofences WHERE id = $1", geofence_id) != "DELETE 0"


async def active_fingerprint(conn: asyncpg.Connection, customer_id) -> tuple:
    """Changes whenever the customer's active geofences change (the tracking pipeline's cache check)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, max(updated_at) AS changed FROM geofences WHERE customer_id = $1 AND active", customer_id
    )
    return (row["n"], row["changed"])


async def active_shapes(conn: asyncpg.Connection, customer_id) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, kind, center_lat, center_lng, radius_meters, polygon FROM geofences "
        "WHERE customer_id = $1 AND active ORDER BY id",
        customer_id,
    )
