"""plans rows (platform table: no tenant scope)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

_COLUMNS = (
    "id, name, price_cents, currency, vehicle_limit, driver_limit, geofence_limit, gps_points_per_day, "
    "retention_days, connection_limit, features, is_public, stripe_price_id, created_at, updated_at"
)
FIELDS = (
    "name",
    "price_cents",
    "currency",
    "vehicle_limit",
    "driver_limit",
    "geofence_limit",
    "gps_points_per_day",
    "retention_days",
    "connection_limit",
    "features",
    "is_public",
    "stripe_price_id",
)


async def list_all(conn: asyncpg.Connection, *, public_only: bool) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM plans WHERE (NOT $1 OR is_public) ORDER BY price_cents, id", public_only
    )


async def get(conn: asyncpg.Connection, plan_id: str, *, for_update: bool = False) -> asyncpg.Record | None:
    if for_update:
        return await conn.fetchrow(f"SELECT {_COLUMNS} FROM plans WHERE id = $1 FOR UPDATE", plan_id)
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM plans WHERE id = $1", plan_id)


async def of_customer(conn: asyncpg.Connection, customer_id) -> asyncpg.Record | None:
    """The plan of the customer's active subscription (a tenant connection on the shared database)."""
    return await conn.fetchrow(
        "SELECT p.id, p.vehicle_limit, p.driver_limit, p.geofence_limit, p.gps_points_per_day, p.retention_days, "
        "p.connection_limit FROM subscriptions s JOIN plans p ON p.id = s.plan_id "
        "WHERE s.customer_id = $1 AND s.status = 'active'",
        customer_id,
    )


async def of_customer_locking(conn: asyncpg.Connection, customer_id, lock_key: str) -> asyncpg.Record | None:
    """of_customer and the transaction-scoped advisory lock `lock_key` in one round trip. The plan is
    read from the statement's snapshot, taken before the lock is granted (as when the two ran one
    after the other); whatever the lock protects must be read by a later statement."""
    row = await conn.fetchrow(
        "SELECT p.id, p.vehicle_limit, p.driver_limit, p.geofence_limit, p.gps_points_per_day, p.retention_days, "
        "p.connection_limit FROM (SELECT pg_advisory_xact_lock(hashtextextended($2, 0))) AS quota_lock "
        "LEFT JOIN (subscriptions s JOIN plans p ON p.id = s.plan_id) ON s.customer_id = $1 AND s.status = 'active'",
        customer_id,
        lock_key,
    )
    return row if row["id"] is not None else None


# The plan column holding each plan-limited resource's limit (limit_query).
_LIMIT_COLUMN = {"vehicles": "vehicle_limit", "drivers": "driver_limit", "geofences": "geofence_limit"}


@dataclass(frozen=True)
class LimitOf:
    """The limit a counting INSERT checks: `known` when the caller has it (a customer on a dedicated
    database, whose plan lives in the shared one), else (None) the statement reads the plan of the
    customer's active subscription itself, `default_plan` when there is none: the fresh plan as
    `of_customer` reads it, without a round trip of its own."""

    known: int | None
    default_plan: str


def limit_query(resource: str, *, customer: str, known: str, default_plan: str) -> str:
    """`known` or else the customer's plan limit of `resource`, as an SQL expression; the arguments
    name the statement's parameters (e.g. "$1::uuid"). The plan subqueries are InitPlans that run
    only when `known` is NULL."""
    column = _LIMIT_COLUMN[resource]
    return (
        f"coalesce({known}, (SELECT p.{column} FROM subscriptions s JOIN plans p ON p.id = s.plan_id "
        f"WHERE s.customer_id = {customer} AND s.status = 'active'), "
        f"(SELECT p.{column} FROM plans p WHERE p.id = {default_plan}))"
    )


async def insert(conn: asyncpg.Connection, plan_id: str, values: dict) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO plans (id, name, price_cents, currency, vehicle_limit, driver_limit, geofence_limit, "
        "gps_points_per_day, retention_days, connection_limit, features, is_public, stripe_price_id) "
        f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING {_COLUMNS}",
        plan_id,
        *(values[f] for f in FIELDS),
    )


async def update(conn: asyncpg.Connection, plan_id: str, values: dict) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE plans SET name = $2, price_cents = $3, currency = $4, vehicle_limit = $5, driver_limit = $6, "
        "geofence_limit = $7, gps_points_per_day = $8, retention_days = $9, connection_limit = $10, features = $11, "
        f"is_public = $12, stripe_price_id = $13, updated_at = now() WHERE id = $1 RETURNING {_COLUMNS}",
        plan_id,
        *(values[f] for f in FIELDS),
    )


async def delete(conn: asyncpg.Connection, plan_id: str) -> bool:
    """False when no such plan; raises ForeignKeyViolationError while any subscription names it."""
    return await conn.execute("DELETE FROM plans WHERE id = $1", plan_id) != "DELETE 0"


async def retention_by_customer(conn: asyncpg.Connection, default_plan: str) -> list[asyncpg.Record]:
    """(id, retention_days) of every customer by its active plan (operator connection)."""
    return await conn.fetch(
        "SELECT c.id, coalesce(p.retention_days, d.retention_days) AS retention_days FROM customers c "
        "LEFT JOIN subscriptions s ON s.customer_id = c.id AND s.status = 'active' "
        "LEFT JOIN plans p ON p.id = s.plan_id LEFT JOIN plans d ON d.id = $1 ORDER BY c.id",
        default_plan,
    )
