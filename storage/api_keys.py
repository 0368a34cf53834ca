"""api_keys rows. Keys live in the shared database (control plane) even for customers whose data
lives on a dedicated one; only the SHA-256 and a display prefix are stored."""

from __future__ import annotations

import datetime as dt

import asyncpg

from .database import Database


async def find_by_hash(db: Database, key_hash: bytes) -> asyncpg.Record | None:
    # One statement, no tenant scope: run it on its own (implicit transaction, one round trip),
    # as this lookup precedes every authenticated request.
    async with db.connection() as conn:
        return await conn.fetchrow("SELECT * FROM webhost_find_api_key($1)", key_hash)


async def touch_last_used(db: Database, customer_id, key_id, when: dt.datetime) -> None:
    async with db.tenant(customer_id) as conn:
        await conn.execute("UPDATE api_keys SET last_used_at = $2 WHERE id = $1", key_id, when)


async def insert(
    conn: asyncpg.Connection,
    *,
    customer_id,
    name: str,
    prefix: str,
    key_hash: bytes,
    environment: str,
    permissions: list[str],
    expires_at: dt.datetime | None,
) -> asyncpg.Record:
    """Insert inside the caller's tenant transaction (so a customer and its first key commit together)."""
    return await conn.fetchrow(
        "INSERT INTO api_keys (customer_id, name, prefix, key_hash, environment, permissions, expires_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) "
        "RETURNING id, customer_id, name, prefix, environment, permissions, created_at, expires_at, revoked_at, "
        "last_used_at",
        customer_id,
        name,
        prefix,
        key_hash,
        environment,
        permissions,
        expires_at,
    )


_COLUMNS = "id, customer_id, name, prefix, environment, permissions, created_at, expires_at, revoked_at, last_used_at"


async def list_page(
    conn: asyncpg.Connection, *, include_revoked: bool, after: tuple, limit: int
) -> list[asyncpg.Record]:
    """The tenant's keys (a tenant connection), oldest first."""
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM api_keys WHERE ($1 OR revoked_at IS NULL) "
        "AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid)) ORDER BY created_at, id LIMIT $4",
        include_revoked,
        after[0],
        after[1],
        limit + 1,
    )


async def get(conn: asyncpg.Connection, key_id) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)


async def revoke(conn: asyncpg.Connection, key_id) -> asyncpg.Record | None:
    """Revoke (idempotent: an already revoked key keeps its first revocation time)."""
    return await conn.fetchrow(
        f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING {_COLUMNS}", key_id
    )
