"""One PostgreSQL database: an asyncpg pool whose connections act as the row-level-security bound
application role, and the one helper that scopes a transaction to a tenant.

Tenant isolation is enforced by PostgreSQL, not by code discipline: every pooled connection runs as
`webhost_app` (it owns no table and cannot bypass RLS), and every tenant table carries
`FORCE ROW LEVEL SECURITY` with a policy on `customer_id = app.customer_id`. The setting is made
transaction-local with set_config(..., true) in `tenant()`, so a connection returned to the pool
carries nothing over. A transaction that never calls it sees no tenant rows at all.
"""
from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator

import asyncpg
import structlog

APP_ROLE = "webhost_app"

# The tenant_isolation policy reads `customer_id = webhost_current_customer() OR webhost_is_operator()`;
# the OR keeps the planner off every customer_id index, so a query with only the policy scans the
# whole table (all tenants: measured 0.8 ms for 2,650 vehicles, growing with every tenant's rows).
# Tenant-scoped list and count queries repeat the tenant condition with this fragment so that the
# (customer_id, ...) indexes serve them. It adds a condition; the policy still applies unchanged.
TENANT_ROWS = "customer_id = webhost_current_customer()"

log = structlog.get_logger("storage.database")
audit = structlog.get_logger("audit")


def app_connection_settings() -> dict[str, str]:
    """Startup settings of every application connection: act as the RLS-bound role."""
    return {"role": APP_ROLE, "application_name": "webhost-sync"}


class Database:
    """A pool on one database (the shared one, or a customer's dedicated one)."""

    def __init__(self, dsn: str, *, min_size: int = 2, max_size: int = 20, name: str = "shared") -> None:
        self.dsn = dsn
        self.name = name
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> "Database":
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                server_settings=app_connection_settings(),
                init=_init_connection,
                reset=_keep_session,
            )
        return self

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(f"database {self.name!r} is not open")
        return self._pool

    @asynccontextmanager
    async def tenant(self, customer_id: uuid.UUID | str) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that sees only `customer_id`'s rows (the single place the setting is made)."""
        async with self.pool.acquire() as conn:
            async with _transaction(conn, _begin_as_tenant(customer_id)):
                yield conn

    @asynccontextmanager
    async def operator(self, reason: str, **context) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that may read across tenants: explicit, and audited in the log."""
        audit.info("operator_access", reason=reason, database=self.name, **context)
        async with self.pool.acquire() as conn:
            async with _transaction(conn, "BEGIN; SELECT set_config('app.operator', 'on', true)"):
                yield conn

    @asynccontextmanager
    async def platform(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction on platform tables (plans, operators, their tokens): no tenant rows visible."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                yield conn

    async def ping(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")


def _begin_as_tenant(customer_id: uuid.UUID | str) -> str:
    """BEGIN and the tenant setting as one simple-protocol query: one round trip instead of two.
    The simple protocol takes no parameters, so the id is written into the text, but only after
    uuid.UUID has parsed it: its canonical form is hex digits and dashes, nothing else."""
    return f"BEGIN; SELECT set_config('app.customer_id', '{uuid.UUID(str(customer_id))}', true)"


@asynccontextmanager
async def _transaction(conn: asyncpg.Connection, begin: str) -> AsyncIterator[None]:
    """`begin` (a BEGIN plus transaction-local settings) ... COMMIT, or ROLLBACK on any exception.
    Like asyncpg's conn.transaction() but its BEGIN carries the settings; a nested
    conn.transaction() inside is refused by asyncpg (none is needed: one transaction per scope)."""
    await conn.execute(begin)
    try:
        yield
    except BaseException:
        try:
            if not conn.is_closed() and conn.is_in_transaction():
                await conn.execute("ROLLBACK")
        except Exception:  # the pool's release rolls back (or discards) the connection instead
            pass
        raise
    await conn.execute("COMMIT")


async def set_tenant(conn: asyncpg.Connection, customer_id: uuid.UUID | str) -> None:
    """Scope the current transaction of `conn` to one customer (used by `tenant()` and by writers
    that batch several customers into one transaction, switching between them)."""
    await conn.execute("SELECT set_config('app.customer_id', $1, true)", str(customer_id))


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (RESET ALL, UNLISTEN, unlock): one round trip saved per
    acquire. Safe because nothing here leaves session state on a pooled connection: the tenant and
    operator settings are transaction-local, advisory locks transaction-scoped, and an open
    transaction is still rolled back by asyncpg before this runs."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns come back as Python objects and go in from them.
    import json

    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
