"""vehicles rows (tenant data: pass a connection from `registry.for_customer(cid).tenant(cid)`, or
for insert and list_page that database itself)."""

from __future__ import annotations

from functools import cache

import asyncpg

from .database import SCOPE_SET, SCOPED_FROM, TENANT_ROWS, Database
from .json_rows import Field, object_sql, page_query
from .plans import LimitOf, limit_query

_COLUMNS = "id, customer_id, name, vehicle_identifier, vehicle_type, metadata, created_at, updated_at"


_INSERT_INTO = (
    "INSERT INTO vehicles (customer_id, name, vehicle_identifier, vehicle_type, metadata, device_secret_hash) "
    "SELECT $2::uuid, $3::text, $4::text, $5::text, $6::jsonb, $7::bytea "
    f"FROM {SCOPED_FROM} (SELECT webhost_quota_count('vehicles') AS used WHERE {SCOPE_SET} OFFSET 0) AS quota "
    f"WHERE quota.used < {limit_query('vehicles', customer='$2::uuid', known='$8::int', default_plan='$9::text')} "
    "RETURNING "
)
_INSERT = _INSERT_INTO + _COLUMNS


@cache
def _insert_rendered(fields: tuple[Field, ...]) -> str:
    return _INSERT_INTO + object_sql(fields, "vehicles") + " AS json"


async def insert(
    db: Database,
    customer_id,
    *,
    name: str,
    vehicle_identifier: str,
    vehicle_type: str,
    metadata: dict,
    device_secret_hash: bytes,
    limit: LimitOf,
    rendered: tuple[Field, ...] | None = None,
) -> asyncpg.Record | None:
    """A new vehicle, only while the customer has fewer than its plan's limit: one statement, one
    round trip (Database.tenant_one), which sets the scope, takes the quota lock and counts after it
    (webhost_quota_count, migration 0160) and inserts; None when the limit is reached. With
    `rendered` the row is (json,): the object of those fields (storage.json_rows)."""
    return await db.tenant_one(
        customer_id,
        _INSERT if rendered is None else _insert_rendered(rendered),
        customer_id,
        name,
        vehicle_identifier,
        vehicle_type,
        metadata,
        device_secret_hash,
        limit.known,
        limit.default_plan,
    )


_PAGE = (
    f"SELECT page.* FROM {SCOPED_FROM} (SELECT {_COLUMNS} FROM vehicles WHERE {SCOPE_SET} AND {TENANT_ROWS} "
    "AND ($2::text IS NULL OR vehicle_type = $2) AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid)) "
    "ORDER BY created_at, id LIMIT $5) AS page ORDER BY page.created_at, page.id"
)


async def list_page(
    db: Database,
    customer_id,
    *,
    vehicle_type: str | None,
    after: tuple,
    limit: int,
    rendered: tuple[Field, ...] | None = None,
) -> list[asyncpg.Record]:
    """One page of the customer's vehicles (and one row more: is there a next page?) in one
    round trip: a self-scoping read (storage.database.SCOPED_FROM). With `rendered`, each row is
    (created_at, id, json): the object of those fields as PostgreSQL wrote it (storage.json_rows)."""
    query = _PAGE if rendered is None else page_query(_PAGE, rendered)
    return await db.tenant_read(customer_id, query, vehicle_type, after[0], after[1], limit + 1)


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
