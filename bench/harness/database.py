"""The bench's own PostgreSQL database for our server: created fresh on the machine's server
(TEST_PG_URL, default postgres@127.0.0.1:5432), migrated, given one customer, dropped after.

Setup writes go straight to the tables as the admin role (a superuser is not bound by row-level
security): the customer and its plan before the REST API exists, and the cold-load update log.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from storage import migrator
from tests.support import databases

SLUG = "bench"
PLAN = "bench-unlimited"  # connection and point limits far above any scenario's counts


class BenchDatabase:
    def __init__(self) -> None:
        self.admin_url = databases.admin_url()
        self.url: str | None = None
        self.customer_id: str | None = None

    def create(self) -> BenchDatabase:
        self.url = asyncio.run(databases.create_database(self.admin_url, prefix="wh_bench"))
        asyncio.run(migrator.migrate(self.url))
        self.customer_id = asyncio.run(self._seed())
        return self

    async def _seed(self) -> str:
        conn = await asyncpg.connect(self.url)
        try:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO plans (id, name, price_cents, vehicle_limit, driver_limit, geofence_limit,"
                    " gps_points_per_day, retention_days, connection_limit, is_public)"
                    " VALUES ($1, 'Bench', 0, 100000, 100000, 100000, 1000000000000, 3650, 1000000, false)",
                    PLAN,
                )
                customer_id = await conn.fetchval(
                    "INSERT INTO customers (slug, name) VALUES ($1, 'Benchmark customer') RETURNING id", SLUG
                )
                await conn.execute(
                    "INSERT INTO subscriptions (customer_id, plan_id) VALUES ($1, $2)", customer_id, PLAN
                )
        finally:
            await conn.close()
        return str(customer_id)

    def insert_updates(self, doc: str, updates: list[bytes]) -> None:
        """Append `updates` to the document's update log in order (COPY), as if clients had sent them."""

        async def copy() -> None:
            conn = await asyncpg.connect(self.url)
            try:
                cid = uuid.UUID(self.customer_id)
                await conn.copy_records_to_table(
                    "doc_updates", columns=["customer_id", "doc", "update"], records=((cid, doc, u) for u in updates)
                )
            finally:
                await conn.close()

        asyncio.run(copy())

    def server_version(self) -> str:
        async def version() -> str:
            conn = await asyncpg.connect(self.admin_url)
            try:
                return await conn.fetchval("SHOW server_version")
            finally:
                await conn.close()

        return asyncio.run(version())

    def drop(self) -> None:
        if self.url:
            asyncio.run(databases.drop_database(self.admin_url, self.url))
            self.url = None
