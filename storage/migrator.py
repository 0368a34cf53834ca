"""Numbered SQL migrations (storage/migrations/NNNN_name.sql), applied in order, each inside its own
transaction, recorded in schema_migrations, under a PostgreSQL advisory lock so that nodes starting
at once never race. Migrations run as the connecting (owner) role, not as the application role.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
LOCK_KEY = 0x7765_6268_6F73  # "webhos": one advisory lock id for every migrating node
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

log = structlog.get_logger("storage.migrator")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise RuntimeError(f"migration file name {path.name!r} is not NNNN_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError("two migrations share a version number")
    return found


async def applied_versions(conn: asyncpg.Connection) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def pending(conn: asyncpg.Connection) -> list[Migration]:
    done = await applied_versions(conn)
    return [m for m in available() if m.version not in done]


async def migrate(dsn: str) -> list[int]:
    """Apply every pending migration; returns the versions applied by this call."""
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "webhost-sync-migrate"})
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = []
            for migration in await pending(conn):
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                log.info("migration_applied", version=migration.version, name=migration.name)
                applied.append(migration.version)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()


async def is_current(conn: asyncpg.Connection) -> bool:
    return not await pending(conn)
