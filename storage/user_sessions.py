"""customer_user_sessions rows (tenant data): the dispatcher app's signed-in sessions, by token hash."""

from __future__ import annotations

import asyncpg

from .database import TENANT_ROWS


async def create(
    conn: asyncpg.Connection, customer_id, user_id, token_hash: bytes, ttl_seconds: int, user_agent: str
) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO customer_user_sessions (customer_id, user_id, token_hash, expires_at, user_agent) "
        "VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5) RETURNING id, expires_at",
        customer_id,
        user_id,
        token_hash,
        float(ttl_seconds),
        user_agent[:300],
    )


async def find_active(conn: asyncpg.Connection, token_hash: bytes) -> asyncpg.Record | None:
    """The live session of this token with its user and customer (role read on every request, so a
    role change applies at once)."""
    return await conn.fetchrow(
        "SELECT s.id AS session_id, s.expires_at, u.id AS user_id, u.email, u.name, u.role, "
        "c.id AS customer_id, c.slug AS customer_slug, c.name AS customer_name, c.status AS customer_status "
        "FROM customer_user_sessions s JOIN customer_users u ON u.id = s.user_id "
        "JOIN customers c ON c.id = s.customer_id "
        f"WHERE s.{TENANT_ROWS} AND s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()",
        token_hash,
    )


async def is_active(conn: asyncpg.Connection, session_id) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM customer_user_sessions WHERE id = $1 AND revoked_at IS NULL "
            "AND expires_at > now())",
            session_id,
        )
    )


async def revoke(conn: asyncpg.Connection, session_id) -> None:
    await conn.execute(
        "UPDATE customer_user_sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", session_id
    )


async def revoke_user(conn: asyncpg.Connection, user_id) -> list:
    """End every session of a user (password changed); returns their ids."""
    rows = await conn.fetch(
        "UPDATE customer_user_sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL RETURNING id",
        user_id,
    )
    return [r["id"] for r in rows]
