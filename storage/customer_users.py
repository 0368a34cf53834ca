"""customer_users rows (tenant data): the people of a customer; email unique per customer, any case."""

from __future__ import annotations

import asyncpg

_COLUMNS = "id, customer_id, email, name, role, created_at, updated_at"


async def insert(
    conn: asyncpg.Connection, customer_id, *, email: str, name: str, role: str, password_hash: str | None
) -> asyncpg.Record:
    """Raises UniqueViolationError when the email (any case) is taken in this customer."""
    return await conn.fetchrow(
        f"INSERT INTO customer_users (customer_id, email, name, role, password_hash) VALUES ($1, $2, $3, $4, $5) "
        f"RETURNING {_COLUMNS}",
        customer_id,
        email,
        name,
        role,
        password_hash,
    )


async def list_page(conn: asyncpg.Connection, *, role: str | None, after: tuple, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM customer_users WHERE ($1::text IS NULL OR role = $1) "
        "AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid)) ORDER BY created_at, id LIMIT $4",
        role,
        after[0],
        after[1],
        limit + 1,
    )


async def get(conn: asyncpg.Connection, user_id, *, for_update: bool = False) -> asyncpg.Record | None:
    if for_update:
        return await conn.fetchrow(f"SELECT {_COLUMNS} FROM customer_users WHERE id = $1 FOR UPDATE", user_id)
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM customer_users WHERE id = $1", user_id)


async def update(
    conn: asyncpg.Connection,
    user_id,
    *,
    email: str,
    name: str,
    role: str,
    password_hash: str | None,
    set_password: bool,
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE customer_users SET email = $2, name = $3, role = $4, "
        "password_hash = CASE WHEN $6 THEN $5 ELSE password_hash END, updated_at = now() "
        f"WHERE id = $1 RETURNING {_COLUMNS}",
        user_id,
        email,
        name,
        role,
        password_hash,
        set_password,
    )


async def delete(conn: asyncpg.Connection, user_id) -> bool:
    return await conn.execute("DELETE FROM customer_users WHERE id = $1", user_id) != "DELETE 0"


async def find_for_sign_in(conn: asyncpg.Connection, email: str) -> asyncpg.Record | None:
    """The user with this email (any case) and its password hash, inside the customer's scope."""
    return await conn.fetchrow(
        f"SELECT {_COLUMNS}, password_hash FROM customer_users WHERE lower(email) = lower($1) "
        "AND password_hash IS NOT NULL",
        email,
    )


async def set_password_hash(conn: asyncpg.Connection, user_id, password_hash: str) -> None:
    await conn.execute("UPDATE customer_users SET password_hash = $2 WHERE id = $1", user_id, password_hash)
