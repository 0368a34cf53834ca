"""The one registry that resolves the database of each customer.

The shared database serves every customer by default; a customer with an active single-tenant
deployment is served by its dedicated database. Sync rooms, materialization and REST all ask the
registry, so they follow a customer wherever it lives. Nothing else opens connections.

Control-plane tables stay in the shared database for every customer: customers, api_keys,
subscriptions, plans, deployments, infrastructure_events, platform_users, tokens. Tenant data moves
with the customer: vehicles, drivers, geofences, geofence_events, routes, vehicle_positions_latest,
gps_positions, usage_metrics, doc_updates, doc_snapshots, customer_users, customer_user_sessions (a
dedicated database holds a copy of the customer's `customers` row so its foreign keys hold).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from . import sealing
from .database import Database
from .deployments import database_url_purpose as _purpose

log = structlog.get_logger("storage.registry")


class DatabaseRegistry:
    def __init__(self, shared: Database, *, dedicated_pool_max: int = 10) -> None:
        self.shared = shared
        self._dedicated: dict[str, Database] = {}  # customer_id -> its dedicated database
        self._routes: dict[str, str] = {}  # customer_id -> dsn of its dedicated database
        self._dedicated_pool_max = dedicated_pool_max
        self._lock = asyncio.Lock()
        self._holds: dict[str, asyncio.Event] = {}  # customer_id -> set when its held route is released

    async def open(self) -> DatabaseRegistry:
        await self.shared.open()
        await self.reload()
        return self

    async def close(self) -> None:
        for db in list(self._dedicated.values()):
            await db.close()
        self._dedicated.clear()
        await self.shared.close()

    async def reload(self) -> None:
        """Read the routing table (active single-tenant deployments) from the shared database."""
        async with self.shared.operator("registry_reload") as conn:
            rows = await conn.fetch(
                "SELECT customer_id, database_url FROM deployments "
                "WHERE mode = 'single_tenant' AND status IN ('active', 'migrating') AND database_url IS NOT NULL"
            )
        routes = {str(r["customer_id"]): sealing.open(r["database_url"], _purpose(r["customer_id"])) for r in rows}
        async with self._lock:
            self._routes = routes
            for customer_id in [c for c in self._dedicated if self._routes.get(c) != self._dedicated[c].dsn]:
                await self._dedicated.pop(customer_id).close()

    async def for_customer(self, customer_id: uuid.UUID | str) -> Database:
        key = str(customer_id)
        hold = self._holds.get(key)
        if hold is not None:
            await hold.wait()  # a tenant migration is switching this customer's database
        dsn = self._routes.get(key)
        if dsn is None:
            return self.shared
        db = self._dedicated.get(key)
        if db is None:
            async with self._lock:
                db = self._dedicated.get(key)
                if db is None:
                    db = Database(
                        dsn, self.shared.role, min_size=1, max_size=self._dedicated_pool_max, name=f"dedicated:{key}"
                    )
                    await db.open()
                    self._dedicated[key] = db
        return db

    async def route(self, customer_id: uuid.UUID | str, dsn: str | None) -> None:
        """Point a customer at a dedicated database (dsn) or back at the shared one (None)."""
        key = str(customer_id)
        async with self._lock:
            if dsn is None:
                self._routes.pop(key, None)
            else:
                self._routes[key] = dsn
            old = self._dedicated.get(key)
            if old is not None and old.dsn != dsn:
                await self._dedicated.pop(key).close()
        log.info("customer_routed", customer_id=key, dedicated=dsn is not None)

    @asynccontextmanager
    async def held(self, customer_id: uuid.UUID | str) -> AsyncIterator[None]:
        """While inside, `for_customer(customer_id)` waits; it resolves the (new) route on exit.
        Used by tenant migration around its final catch-up and the switch."""
        key = str(customer_id)
        event = asyncio.Event()
        self._holds[key] = event
        try:
            yield
        finally:
            del self._holds[key]
            event.set()

    @asynccontextmanager
    async def standalone(self, dsn: str, name: str = "standalone") -> AsyncIterator[Database]:
        """A short-lived pool on a database that serves no customer yet (a migration's target)."""
        db = Database(dsn, self.shared.role, min_size=1, max_size=4, name=name)
        await db.open()
        try:
            yield db
        finally:
            await db.close()

    def open_dedicated(self) -> list[Database]:
        """The dedicated databases' pools open on this node now (no lookup, nothing opened)."""
        return list(self._dedicated.values())

    async def dedicated(self) -> list[Database]:
        """The pools of every routed dedicated database (for their partition maintenance)."""
        return [await self.for_customer(customer_id) for customer_id in list(self._routes)]
