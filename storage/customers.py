"""customers rows (control plane, always in the shared database). Operator paths pass a connection
from Database.operator(); a customer reading its own row passes a tenant connection."""

from __future__ import annotations

import asyncpg

_SELECT = (
    "SELECT c.id, c.slug, c.name, c.email, c.status, c.suspended_by, c.deployment_mode, c.metadata, c.created_at, c.updated_at, "
    "s.plan_id FROM customers c "
    "LEFT JOIN subscriptions s ON s.customer_id = c.id AND s.status = 'active' "
)


async def insert(
    conn: asyncpg.Connection, *, slug: str, name: str, email: str | None, metadata: dict
) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO customers (slug, name, email, metadata) VALUES ($1, $2, $3, $4) RETURNING id",
        slug,
        name,
        email,
        metadata,
    )


async def get(conn: asyncpg.Connection, customer_id, *, for_update: bool = False) -> asyncpg.Record | None:
    if for_update:
        return await conn.fetchrow(_SELECT + "WHERE c.id = $1 FOR UPDATE OF c", customer_id)
    return await conn.fetchrow(_SELECT + "WHERE c.id = $1", customer_id)


async def list_page(
    conn: asyncpg.Connection, *, status: str | None, search: str | None, plan_id: str | None, after: tuple, limit: int
) -> list[asyncpg.Record]:
    """`search` matches slug, name or email case-insensitively (substring)."""
    pattern = None
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return await conn.fetch(
        _SELECT + "WHERE ($1::text IS NULL OR c.status = $1) "
        "AND ($2::text IS NULL OR c.slug ILIKE $2 OR c.name ILIKE $2 OR c.email ILIKE $2) "
        "AND ($3::text IS NULL OR s.plan_id = $3) "
        "AND ($4::timestamptz IS NULL OR (c.created_at, c.id) > ($4, $5::uuid)) "
        "ORDER BY c.created_at, c.id LIMIT $6",
        status,
        pattern,
        plan_id,
        after[0],
        after[1],
        limit + 1,
    )


async def update(conn: asyncpg.Connection, customer_id, *, name: str, email: str | None, metadata: dict) -> bool:
    result = await conn.execute(
        "UPDATE customers SET name = $2, email = $3, metadata = $4, updated_at = now() WHERE id = $1",
        customer_id,
        name,
        email,
        metadata,
    )
    return result != "UPDATE 0"


async def set_status(conn: asyncpg.Connection, customer_id, status: str, *, by: str) -> bool:
    """Suspend (`status` "suspended") or reactivate ("active") as `by`, recorded in `suspended_by`.
    An operator's change applies whoever suspended before; billing ("billing") suspends only an
    active customer and reactivates only one billing suspended (an operator's suspension stays).
    True when a row changed."""
    if by not in ("operator", "billing") or status not in ("active", "suspended"):
        raise ValueError(f"no status change {status!r} by {by!r}")
    result = await conn.execute(
        "UPDATE customers SET status = $2, suspended_by = CASE WHEN $2 = 'suspended' THEN $3 END, updated_at = now() "
        "WHERE id = $1 AND ($3 = 'operator' OR CASE WHEN $2 = 'suspended' THEN status = 'active' "
        "ELSE status = 'suspended' AND suspended_by = 'billing' END)",
        customer_id,
        status,
        by,
    )
    return result != "UPDATE 0"


async def delete(conn: asyncpg.Connection, customer_id) -> bool:
    return await conn.execute("DELETE FROM customers WHERE id = $1", customer_id) != "DELETE 0"


async def lock(conn: asyncpg.Connection, customer_id) -> asyncpg.Record | None:
    """The customer's row, locked for the rest of the transaction (serialises plan changes)."""
    return await conn.fetchrow("SELECT id, status FROM customers WHERE id = $1 FOR UPDATE", customer_id)
