"""subscriptions rows (control plane, shared database): at most one active per customer."""

from __future__ import annotations

import asyncpg

_COLUMNS = (
    "id, customer_id, plan_id, status, current_period_start, current_period_end, cancel_at_period_end, "
    "created_at, canceled_at"
)


async def insert(conn: asyncpg.Connection, customer_id, plan_id: str) -> asyncpg.Record:
    return await conn.fetchrow(
        f"INSERT INTO subscriptions (customer_id, plan_id) VALUES ($1, $2) RETURNING {_COLUMNS}", customer_id, plan_id
    )


async def active(conn: asyncpg.Connection, customer_id, *, for_update: bool = False) -> asyncpg.Record | None:
    if for_update:
        return await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM subscriptions WHERE customer_id = $1 AND status = 'active' FOR UPDATE", customer_id
        )
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM subscriptions WHERE customer_id = $1 AND status = 'active'", customer_id
    )


async def replace(conn: asyncpg.Connection, subscription_id, customer_id, plan_id: str) -> asyncpg.Record:
    """End the active subscription now and start one on `plan_id` (history is kept)."""
    await conn.execute(
        "UPDATE subscriptions SET status = 'canceled', canceled_at = now() WHERE id = $1", subscription_id
    )
    return await insert(conn, customer_id, plan_id)


async def set_cancel_at_period_end(conn: asyncpg.Connection, subscription_id, flag: bool) -> asyncpg.Record:
    return await conn.fetchrow(
        f"UPDATE subscriptions SET cancel_at_period_end = $2 WHERE id = $1 RETURNING {_COLUMNS}", subscription_id, flag
    )
