"""Customer lookups the sync endpoint needs before it knows the tenant (SECURITY DEFINER function,
so no tenant scope is required)."""

from __future__ import annotations

import asyncpg

from .database import Database


async def find_by_slug(db: Database, slug: str) -> asyncpg.Record | None:
    """(id, slug, status) of the customer, or None."""
    async with db.platform() as conn:
        return await conn.fetchrow("SELECT id, slug, status FROM webhost_find_customer($1)", slug)


async def find_device(db: Database, secret_hash: bytes) -> asyncpg.Record | None:
    """(customer_id, customer_status, vehicle_id, vehicle_identifier) of the vehicle whose device
    secret hashes to `secret_hash` (shared database; dedicated-database customers are not found)."""
    async with db.platform() as conn:
        return await conn.fetchrow("SELECT * FROM webhost_find_device($1)", secret_hash)
