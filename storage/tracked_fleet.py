"""Reads the tracking pipeline needs from the fleet and plan tables (tenant connections)."""
from __future__ import annotations

import asyncpg


async def geofences_fingerprint(conn: asyncpg.Connection, customer_id) -> tuple:
    """Changes whenever the customer's active geofences change (cheap cache check)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, max(updated_at) AS changed FROM geofences WHERE customer_id = $1 AND active",
        customer_id)
    return (row["n"], row["changed"])


async def active_geofences(conn: asyncpg.Connection, customer_id) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, kind, center_lat, center_lng, radius_meters, polygon FROM geofences "
        "WHERE customer_id = $1 AND active ORDER BY id", customer_id)


async def vehicle(conn: asyncpg.Connection, customer_id, *, vehicle_id=None, identifier: str | None = None
                  ) -> asyncpg.Record | None:
    """A vehicle by id or by vehicle_identifier, with its device secret hash."""
    return await conn.fetchrow(
        "SELECT id, name, vehicle_identifier, device_secret_hash FROM vehicles WHERE customer_id = $1 "
        "AND (($2::uuid IS NOT NULL AND id = $2) OR ($3::text IS NOT NULL AND vehicle_identifier = $3))",
        customer_id, vehicle_id, identifier)


async def plan_limits(conn: asyncpg.Connection, customer_id, default_plan: str) -> asyncpg.Record:
    """gps_points_per_day and retention_days of the customer's active plan (shared database)."""
    row = await conn.fetchrow(
        "SELECT p.id, p.gps_points_per_day, p.retention_days FROM subscriptions s JOIN plans p ON p.id = s.plan_id "
        "WHERE s.customer_id = $1 AND s.status = 'active'", customer_id)
    if row is None:
        row = await conn.fetchrow("SELECT id, gps_points_per_day, retention_days FROM plans WHERE id = $1",
                                  default_plan)
    return row


async def customer_by_slug(conn: asyncpg.Connection, slug: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, slug, status FROM webhost_find_customer($1)", slug)


async def device_by_secret_hash(conn: asyncpg.Connection, secret_hash: bytes) -> asyncpg.Record | None:
    """The vehicle whose device secret hashes to `secret_hash` (shared database, before any tenant)."""
    return await conn.fetchrow("SELECT * FROM webhost_find_device($1)", secret_hash)


async def retention_of_customers(conn: asyncpg.Connection, default_plan: str) -> list[asyncpg.Record]:
    """(customer id, retention_days) of every customer (operator connection on the shared database)."""
    return await conn.fetch(
        "SELECT c.id, coalesce(p.retention_days, d.retention_days) AS retention_days FROM customers c "
        "LEFT JOIN subscriptions s ON s.customer_id = c.id AND s.status = 'active' "
        "LEFT JOIN plans p ON p.id = s.plan_id LEFT JOIN plans d ON d.id = $1 ORDER BY c.id", default_plan)
