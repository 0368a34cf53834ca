"""Tenant rows for tracking tests, inserted with SQL through the RLS-bound role."""

from __future__ import annotations

import json
import uuid

from storage import Database


async def customer(db: Database, slug: str | None = None, plan: str | None = None) -> uuid.UUID:
    slug = slug or f"c-{uuid.uuid4().hex[:10]}"
    async with db.operator("test_setup") as conn:
        cid = await conn.fetchval("INSERT INTO customers (slug, name) VALUES ($1, $1) RETURNING id", slug)
        if plan:
            await conn.execute("INSERT INTO subscriptions (customer_id, plan_id) VALUES ($1, $2)", cid, plan)
    return cid


async def plan(db: Database, plan_id: str, *, points_per_day: int, retention_days: int = 30) -> str:
    async with db.platform() as conn:
        await conn.execute(
            "INSERT INTO plans (id, name, price_cents, vehicle_limit, driver_limit, geofence_limit, "
            "gps_points_per_day, retention_days) VALUES ($1, $1, 0, 10, 10, 10, $2, $3)",
            plan_id,
            points_per_day,
            retention_days,
        )
    return plan_id


async def vehicle(
    db: Database, customer_id, identifier: str = "truck-1", secret_hash: bytes | None = None
) -> uuid.UUID:
    async with db.tenant(customer_id) as conn:
        return await conn.fetchval(
            "INSERT INTO vehicles (customer_id, name, vehicle_identifier, device_secret_hash) "
            "VALUES ($1, $2, $2, $3) RETURNING id",
            customer_id,
            identifier,
            secret_hash,
        )


async def circle(db: Database, customer_id, name: str, lat: float, lng: float, radius: float) -> uuid.UUID:
    async with db.tenant(customer_id) as conn:
        return await conn.fetchval(
            "INSERT INTO geofences (customer_id, name, kind, center_lat, center_lng, radius_meters) "
            "VALUES ($1, $2, 'circle', $3, $4, $5) RETURNING id",
            customer_id,
            name,
            lat,
            lng,
            radius,
        )


async def polygon(db: Database, customer_id, name: str, ring: list[tuple[float, float]]) -> uuid.UUID:
    """`ring` as (lat, lng) pairs; stored as a closed GeoJSON Polygon ([lng, lat])."""
    coords = [[lng, lat] for lat, lng in ring] + [[ring[0][1], ring[0][0]]]
    async with db.tenant(customer_id) as conn:
        return await conn.fetchval(
            "INSERT INTO geofences (customer_id, name, kind, polygon) VALUES ($1, $2, 'polygon', $3) RETURNING id",
            customer_id,
            name,
            {"type": "Polygon", "coordinates": [coords]},
        )


async def count(db: Database, customer_id, sql: str, *args) -> int:
    async with db.tenant(customer_id) as conn:
        return await conn.fetchval(sql, *args)


async def rows(db: Database, customer_id, sql: str, *args) -> list:
    async with db.tenant(customer_id) as conn:
        return await conn.fetch(sql, *args)


async def usage(db: Database, customer_id) -> dict[str, int]:
    async with db.tenant(customer_id) as conn:
        found = await conn.fetch("SELECT metric, sum(value) AS n FROM usage_metrics GROUP BY metric")
    return {r["metric"]: r["n"] for r in found}


def dumps(value) -> str:
    return json.dumps(value)


async def api_key(db: Database, customer_id, permissions=("admin",)) -> str:
    from storage import api_keys as key_store
    from sync_server.domain.accounts import api_keys

    raw = api_keys.generate("live")
    async with db.tenant(customer_id) as conn:
        await key_store.insert(
            conn,
            customer_id=customer_id,
            name="test",
            prefix=api_keys.display_prefix(raw),
            key_hash=api_keys.digest(raw),
            environment="live",
            permissions=list(permissions),
            expires_at=None,
        )
    return raw


def secret_hash(secret: str) -> bytes:
    import hashlib

    return hashlib.sha256(secret.encode()).digest()
