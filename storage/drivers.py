"""drivers rows (tenant data)."""

from __future__ import annotations

import asyncpg

from .database import SCOPE_SET, SCOPED_FROM, TENANT_ROWS, Database
from .json_rows import Field, page_query

_COLUMNS = "id, customer_id, name, email, phone, license_number, vehicle_id, created_at, updated_at"


async def insert(
    conn: asyncpg.Connection,
    customer_id,
    *,
    name: str,
    email: str | None,
    phone: str | None,
    license_number: str | None,
    vehicle_id,
) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO drivers (customer_id, name, email, phone, license_number, vehicle_id) "
        f"VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}",
        customer_id,
        name,
        email,
        phone,
        license_number,
        vehicle_id,
    )


_PAGE = (
    f"SELECT page.* FROM {SCOPED_FROM} (SELECT {_COLUMNS} FROM drivers WHERE {SCOPE_SET} AND {TENANT_ROWS} "
    "AND ($2::uuid IS NULL OR vehicle_id = $2) AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid)) "
    "ORDER BY created_at, id LIMIT $5) AS page ORDER BY page.created_at, page.id"
)


async def list_page(
    db: Database, customer_id, *, vehicle_id, after: tuple, limit: int, rendered: tuple[Field, ...] | None = None
) -> list[asyncpg.Record]:
    """One page of the customer's drivers (and one more row) in one round trip (a self-scoping read);
    `rendered` as in vehicles.list_page."""
    query = _PAGE if rendered is None else page_query(_PAGE, rendered)
    return await db.tenant_read(customer_id, query, vehicle_id, after[0], after[1], limit + 1)


async def get(conn: asyncpg.Connection, driver_id, *, for_update: bool = False) -> asyncpg.Record | None:
    if for_update:
        return await conn.fetchrow(f"SELECT {_COLUMNS} FROM drivers WHERE id = $1 FOR UPDATE", driver_id)
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM drivers WHERE id = $1", driver_id)


async def update(
    conn: asyncpg.Connection,
    driver_id,
    *,
    name: str,
    email: str | None,
    phone: str | None,
    license_number: str | None,
    vehicle_id,
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE drivers SET name = $2, email = $3, phone = $4, license_number = $5, vehicle_id = $6, "
        f"updated_at = now() WHERE id = $1 RETURNING {_COLUMNS}",
        driver_id,
        name,
        email,
        phone,
        license_number,
        vehicle_id,
    )


async def delete(conn: asyncpg.Connection, driver_id) -> bool:
    return await conn.execute("DELETE FROM drivers WHERE id = $1", driver_id) != "DELETE 0"
