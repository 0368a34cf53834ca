"""deployments, infrastructure_events, recommendations and tenant_migrations rows: the provisioning
control plane. These live in the shared database for every customer (see storage/registry.py)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from . import sealed_columns, sealing
from .database import Database

# Credentials are sealed here on the way in and opened on the way out (storage/sealed_columns.py):
# callers see plaintext, rows hold only `sealed:v1:...` (migration 0120 refuses anything else).
_DATABASE_URL = sealed_columns.column("deployments", "database_url")
_PROVISIONED_URL = sealed_columns.column("deployments", "provisioned_url")
_CONFIG = sealed_columns.column("deployments", "config")
_SOURCE_URL = sealed_columns.column("tenant_migrations", "source_url")


def _opened(row: asyncpg.Record | None) -> dict | None:
    """A deployments row with its credentials opened."""
    if row is None:
        return None
    out = dict(row)
    cid = out["customer_id"]
    for col in (_DATABASE_URL, _PROVISIONED_URL):
        if col.column in out:
            out[col.column] = sealing.open_optional(out[col.column], col.purpose_for(cid))
    if "config" in out:
        out["config"] = sealed_columns.open_json(_CONFIG, cid, out["config"])
    return out


def database_url_purpose(customer_id) -> str:
    return _DATABASE_URL.purpose_for(customer_id)


def seal_database_url(customer_id, url: str | None) -> str | None:
    """What deployments.database_url stores for `url` (the tenant migration's switch writes it)."""
    return sealing.seal_optional(url, _DATABASE_URL.purpose_for(customer_id))


def open_database_url(customer_id, stored: str | None) -> str | None:
    return sealing.open_optional(stored, _DATABASE_URL.purpose_for(customer_id))


COLUMNS = (
    "id, customer_id, mode, infrastructure, status, region, database_url, provisioned_url, config, error, "
    "created_at, updated_at"
)


async def insert(
    db: Database, *, customer_id, mode: str, infrastructure: str, region: str | None, config: dict
) -> dict:
    """A new deployment in status `provisioning`; raises UniqueViolationError when the customer
    already has one that is provisioning, active or migrating."""
    async with db.tenant(customer_id) as conn:
        row = await conn.fetchrow(
            f"INSERT INTO deployments (customer_id, mode, infrastructure, region, config) VALUES ($1, $2, $3, $4, $5) "
            f"RETURNING {COLUMNS}",
            customer_id,
            mode,
            infrastructure,
            region,
            sealed_columns.seal_json(_CONFIG, customer_id, config),
        )
    return _opened(row)  # type: ignore[return-value]


async def get(db: Database, deployment_id) -> dict | None:
    async with db.operator("deployment_show", deployment_id=str(deployment_id)) as conn:
        return _opened(await conn.fetchrow(f"SELECT {COLUMNS} FROM deployments WHERE id = $1", deployment_id))


async def list_all(db: Database, *, customer_id=None, status: str | None = None, limit: int = 100) -> list[dict]:
    async with db.operator("deployment_list") as conn:
        rows = await conn.fetch(
            f"SELECT {COLUMNS} FROM deployments WHERE ($1::uuid IS NULL OR customer_id = $1) "
            f"AND ($2::text IS NULL OR status = $2) ORDER BY created_at DESC LIMIT $3",
            customer_id,
            status,
            limit,
        )
    return [_opened(r) for r in rows]  # type: ignore[misc]


async def current(db: Database, customer_id) -> dict | None:
    """The customer's deployment that is provisioning, active or migrating, if any."""
    async with db.tenant(customer_id) as conn:
        row = await conn.fetchrow(
            f"SELECT {COLUMNS} FROM deployments WHERE customer_id = $1 "
            f"AND status IN ('provisioning', 'active', 'migrating')",
            customer_id,
        )
    return _opened(row)


async def in_status(db: Database, status: str) -> list[dict]:
    async with db.operator("deployment_resume", status=status) as conn:
        rows = await conn.fetch(f"SELECT {COLUMNS} FROM deployments WHERE status = $1 ORDER BY created_at", status)
    return [_opened(r) for r in rows]  # type: ignore[misc]


async def update(db: Database, deployment_id, customer_id, **fields: Any) -> dict:
    """Set status / database_url / provisioned_url / config / error (only these columns)."""
    allowed = ("status", "database_url", "provisioned_url", "config", "error")
    unknown = set(fields) - set(allowed)
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    keep = [name not in fields for name in allowed]
    sealed = {
        "database_url": sealing.seal_optional(fields.get("database_url"), _DATABASE_URL.purpose_for(customer_id)),
        "provisioned_url": sealing.seal_optional(
            fields.get("provisioned_url"), _PROVISIONED_URL.purpose_for(customer_id)
        ),
        "config": sealed_columns.seal_json(_CONFIG, customer_id, fields.get("config")),
    }
    values = [sealed.get(name, fields.get(name)) for name in allowed]
    async with db.tenant(customer_id) as conn:
        row = await conn.fetchrow(
            "UPDATE deployments SET "
            "status = CASE WHEN $2 THEN status ELSE $7 END, "
            "database_url = CASE WHEN $3 THEN database_url ELSE $8 END, "
            "provisioned_url = CASE WHEN $4 THEN provisioned_url ELSE $9 END, "
            "config = CASE WHEN $5 THEN config ELSE $10::jsonb END, "
            "error = CASE WHEN $6 THEN error ELSE $11 END, "
            f"updated_at = now() WHERE id = $1 RETURNING {COLUMNS}",
            deployment_id,
            *keep,
            *values,
        )
    return _opened(row)  # type: ignore[return-value]


async def record_event(
    db: Database,
    *,
    customer_id,
    deployment_id,
    step: str,
    status: str,
    data: dict | None = None,
    error: str | None = None,
) -> None:
    async with db.tenant(customer_id) as conn:
        await conn.execute(
            "INSERT INTO infrastructure_events (customer_id, deployment_id, step, status, data, error) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            customer_id,
            deployment_id,
            step,
            status,
            data or {},
            error,
        )


async def events(db: Database, customer_id, deployment_id=None) -> list[asyncpg.Record]:
    async with db.tenant(customer_id) as conn:
        return await conn.fetch(
            "SELECT id, deployment_id, step, status, data, error, created_at FROM infrastructure_events "
            "WHERE customer_id = $1 AND ($2::uuid IS NULL OR deployment_id = $2) ORDER BY id",
            customer_id,
            deployment_id,
        )


async def recent_events(db: Database, *, customer_id=None, before_id: int | None = None, limit: int = 50) -> list:
    """Infrastructure events of every customer (or one), newest first, with the customer's slug:
    an audited operator read (the console's event list; `before_id` pages back)."""
    async with db.operator("list_infrastructure_events", customer_id=str(customer_id or "*")) as conn:
        return await conn.fetch(
            "SELECT e.id, e.customer_id, c.slug AS customer_slug, e.deployment_id, e.step, e.status, e.data, "
            "e.error, e.created_at FROM infrastructure_events e LEFT JOIN customers c ON c.id = e.customer_id "
            "WHERE ($1::uuid IS NULL OR e.customer_id = $1) AND ($2::bigint IS NULL OR e.id < $2) "
            "ORDER BY e.id DESC LIMIT $3",
            customer_id,
            before_id,
            limit,
        )


# Recommendations -----------------------------------------------------------------------------


async def record_recommendation(db: Database, customer_id, *, trigger: str, profile: dict, rec: dict) -> asyncpg.Record:
    async with db.tenant(customer_id) as conn:
        return await conn.fetchrow(
            "INSERT INTO recommendations (customer_id, trigger, profile, mode, infrastructure, plan, reason, rules) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id, created_at",
            customer_id,
            trigger,
            profile,
            rec["mode"],
            rec["infrastructure"],
            rec["plan"],
            rec["reason"],
            rec["rules"],
        )


async def recommendations(db: Database, customer_id) -> list[asyncpg.Record]:
    async with db.tenant(customer_id) as conn:
        return await conn.fetch(
            "SELECT id, trigger, profile, mode, infrastructure, plan, reason, rules, created_at FROM recommendations "
            "WHERE customer_id = $1 ORDER BY id",
            customer_id,
        )


async def customer_profile(db: Database, customer_id) -> asyncpg.Record | None:
    """What the decision engine needs from the control plane: regions, compliance, metadata, plan."""
    async with db.tenant(customer_id) as conn:
        return await conn.fetchrow(
            "SELECT c.id, c.slug, c.status, c.deployment_mode, c.regions, c.compliance, c.metadata, "
            "(SELECT s.plan_id FROM subscriptions s WHERE s.customer_id = c.id AND s.status = 'active') AS plan "
            "FROM customers c WHERE c.id = $1",
            customer_id,
        )


async def plan_retention_days(db: Database, plan_id: str) -> int | None:
    async with db.platform() as conn:
        return await conn.fetchval("SELECT retention_days FROM plans WHERE id = $1", plan_id)


async def set_customer_mode(conn: asyncpg.Connection, customer_id, mode: str) -> None:
    await conn.execute("UPDATE customers SET deployment_mode = $2, updated_at = now() WHERE id = $1", customer_id, mode)


# Tenant migrations ---------------------------------------------------------------------------

MIGRATION_COLUMNS = (
    "id, customer_id, deployment_id, from_mode, to_mode, status, plan, dropping, tables, pause_ms, "
    "source_url, cleanup_after, error, created_at, finished_at"
)


async def insert_migration(
    db: Database,
    *,
    customer_id,
    deployment_id,
    from_mode: str,
    to_mode: str,
    plan: str | None,
    dropping: dict,
    source_url: str | None,
) -> dict:
    async with db.tenant(customer_id) as conn:
        row = await conn.fetchrow(
            "INSERT INTO tenant_migrations (customer_id, deployment_id, from_mode, to_mode, plan, dropping, source_url) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {MIGRATION_COLUMNS}",
            customer_id,
            deployment_id,
            from_mode,
            to_mode,
            plan,
            dropping,
            sealing.seal_optional(source_url, _SOURCE_URL.purpose_for(customer_id)),
        )
    return _migration(row)  # type: ignore[return-value]


def _migration(row: asyncpg.Record | None) -> dict | None:
    """A tenant_migrations row with source_url opened."""
    if row is None:
        return None
    out = dict(row)
    out["source_url"] = sealing.open_optional(out["source_url"], _SOURCE_URL.purpose_for(out["customer_id"]))
    return out


async def get_migration(db: Database, customer_id, migration_id) -> dict | None:
    async with db.tenant(customer_id) as conn:
        return _migration(
            await conn.fetchrow(f"SELECT {MIGRATION_COLUMNS} FROM tenant_migrations WHERE id = $1", migration_id)
        )


async def list_migrations(db: Database, customer_id) -> list[dict]:
    async with db.tenant(customer_id) as conn:
        rows = await conn.fetch(
            f"SELECT {MIGRATION_COLUMNS} FROM tenant_migrations WHERE customer_id = $1 ORDER BY created_at", customer_id
        )
    return [_migration(r) for r in rows]  # type: ignore[misc]


async def migrations_in_status(db: Database, status: str) -> list[dict]:
    async with db.operator("tenant_migration_resume", status=status) as conn:
        rows = await conn.fetch(
            f"SELECT {MIGRATION_COLUMNS} FROM tenant_migrations WHERE status = $1 ORDER BY created_at", status
        )
    return [_migration(r) for r in rows]  # type: ignore[misc]


async def finish_migration(
    conn: asyncpg.Connection,
    migration_id,
    *,
    status: str,
    tables: dict | None = None,
    pause_ms: float | None = None,
    cleanup_after=None,
    error: str | None = None,
) -> None:
    """Inside the caller's transaction (the cut-over commits the route and this row together)."""
    await conn.execute(
        "UPDATE tenant_migrations SET status = $2, tables = coalesce($3, tables), pause_ms = coalesce($4, pause_ms), "
        "cleanup_after = coalesce($5, cleanup_after), error = $6, "
        "finished_at = CASE WHEN $2 IN ('switched', 'failed') THEN now() ELSE finished_at END WHERE id = $1",
        migration_id,
        status,
        tables,
        pause_ms,
        cleanup_after,
        error,
    )


async def set_migration_status(db: Database, customer_id, migration_id, **fields: Any) -> None:
    async with db.tenant(customer_id) as conn:
        await finish_migration(conn, migration_id, **fields)


async def pending_cleanups(db: Database) -> list[dict]:
    async with db.operator("tenant_migration_cleanup") as conn:
        rows = await conn.fetch(
            f"SELECT {MIGRATION_COLUMNS} FROM tenant_migrations WHERE status = 'switched' ORDER BY cleanup_after"
        )
    return [_migration(r) for r in rows]  # type: ignore[misc]


def new_id() -> uuid.UUID:
    return uuid.uuid4()


async def vehicle_count(db: Database, customer_id) -> int:
    """Vehicles of the customer, on whichever database serves it (pass the registry's answer)."""
    async with db.tenant(customer_id) as conn:
        return await conn.fetchval("SELECT count(*) FROM vehicles WHERE customer_id = $1", customer_id)
