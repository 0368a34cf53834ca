"""Seed data for provisioning tests, written as the owner role (test set-up, not application code)."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid

import asyncpg
import pycrdt

from storage import tenant_data


async def seed_customer(
    url: str, *, slug: str = "acme", gps_rows: int = 50_000, old_rows: int = 0, plan: str | None = "starter"
) -> uuid.UUID:
    """A customer with 3 vehicles, 2 geofences, `gps_rows` GPS points over the last ~2 days (plus
    `old_rows` 40 days old), a few document updates and a snapshot, a geofence event and usage."""
    conn = await asyncpg.connect(url)
    try:
        cid = await conn.fetchval(
            "INSERT INTO customers (slug, name, regions, metadata) VALUES ($1, $2, '{eu}', "
            "'{\"latency_ms\": 120}') RETURNING id",
            slug,
            slug.title(),
        )
        if plan:
            await conn.execute("INSERT INTO subscriptions (customer_id, plan_id) VALUES ($1, $2)", cid, plan)
        vehicles = [
            await conn.fetchval(
                "INSERT INTO vehicles (customer_id, name, vehicle_identifier) VALUES ($1, $2, $3) RETURNING id",
                cid,
                f"Truck {i}",
                f"TRK-{i}",
            )
            for i in range(3)
        ]
        fences = [
            await conn.fetchval(
                "INSERT INTO geofences (customer_id, name, kind, center_lat, center_lng, radius_meters) "
                "VALUES ($1, $2, 'circle', 52.5, 13.4, $3) RETURNING id",
                cid,
                f"Depot {i}",
                100.0 + i,
            )
            for i in range(2)
        ]
        await conn.execute(
            "INSERT INTO drivers (customer_id, name, email, vehicle_id) VALUES ($1, 'Ann', 'ann@example.com', $2)",
            cid,
            vehicles[0],
        )
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        today = now.date()
        await conn.execute(
            "SELECT webhost_ensure_day_partitions('gps_positions', $1, $2)",
            today - dt.timedelta(days=41),
            today + dt.timedelta(days=1),
        )
        await conn.execute(
            "SELECT webhost_ensure_day_partitions('usage_metrics', $1, $2)",
            today - dt.timedelta(days=41),
            today + dt.timedelta(days=1),
        )
        # 50,000 rows: vehicle i % 3, one point every 3 s per vehicle, ending now.
        await conn.execute(
            "INSERT INTO gps_positions (customer_id, vehicle_id, time, lat, lng, speed, heading, accuracy, altitude) "
            "SELECT $1, ($2::uuid[])[1 + g % 3], $3::timestamptz - make_interval(secs => (g / 3) * 3 + (g % 3) * 0.001), "
            "52.5 + g * 1e-6, 13.4 - g * 1e-6, (g % 30)::real, (g % 360)::real, 5.5, 34.25 "
            "FROM generate_series(0, $4 - 1) g",
            cid,
            vehicles,
            now,
            gps_rows,
        )
        if old_rows:
            await conn.execute(
                "INSERT INTO gps_positions (customer_id, vehicle_id, time, lat, lng) "
                "SELECT $1, $2, $3::timestamptz - interval '40 days' - make_interval(secs => g), 50.0, 10.0 "
                "FROM generate_series(1, $4) g",
                cid,
                vehicles[1],
                now,
                old_rows,
            )
            await conn.execute(
                "INSERT INTO usage_metrics (customer_id, time, metric, value) "
                "VALUES ($1, $2::timestamptz - interval '40 days', 'gps_points', 7)",
                cid,
                now,
            )
        await conn.execute(
            "INSERT INTO usage_metrics (customer_id, time, metric, value) VALUES ($1, $2, 'gps_points', $3)",
            cid,
            now,
            gps_rows,
        )
        await conn.execute(
            "INSERT INTO vehicle_positions_latest (customer_id, vehicle_id, time, lat, lng) "
            "SELECT $1, v, $2, 52.5, 13.4 FROM unnest($3::uuid[]) v",
            cid,
            now,
            vehicles,
        )
        await conn.execute(
            "INSERT INTO geofence_events (customer_id, geofence_id, vehicle_id, event, time, lat, lng) "
            "VALUES ($1, $2, $3, 'enter', $4, 52.5, 13.4)",
            cid,
            fences[0],
            vehicles[0],
            now,
        )
        ydoc = pycrdt.Doc()
        ydoc["meta"] = meta = pycrdt.Map()
        for i in range(5):  # real Yjs updates, so the sync server can load the document
            state = ydoc.get_state()
            meta[f"k{i}"] = i
            await conn.execute(
                "INSERT INTO doc_updates (customer_id, doc, update) VALUES ($1, 'fleet', $2)",
                cid,
                ydoc.get_update(state),
            )
        await conn.execute(
            "INSERT INTO doc_snapshots (customer_id, doc, state, upto_seq, update_count) "
            "VALUES ($1, 'fleet', $2, 0, 0)",
            cid,
            pycrdt.Doc().get_update(),
        )
        return cid
    finally:
        await conn.close()


async def snapshot(url: str, customer_id, *, tables=None) -> dict[str, dict]:
    """Count and checksum of every tenant table of the customer, read as the owner."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await tenant_data.prepare(conn)
            return {
                t.name: await tenant_data.checksum(conn, t, customer_id, None)
                for t in (tables or tenant_data.TENANT_TABLES)
            }
    finally:
        await conn.close()


async def operator_token(url: str, role: str = "admin") -> str:
    raw = secrets.token_urlsafe(32)
    conn = await asyncpg.connect(url)
    try:
        uid = await conn.fetchval(
            "INSERT INTO platform_users (email, password_hash, role) VALUES ($1, 'x', $2) RETURNING id",
            f"op-{uuid.uuid4().hex[:8]}@example.com",
            role,
        )
        await conn.execute(
            "INSERT INTO tokens (token_hash, platform_user_id, expires_at) VALUES ($1, $2, now() + interval '1 hour')",
            hashlib.sha256(raw.encode()).digest(),
            uid,
        )
    finally:
        await conn.close()
    return raw


async def dedicated_database_names(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT config->>'our_database' AS n FROM deployments "
            "WHERE infrastructure = 'local' AND config ? 'our_database'"
        )
    finally:
        await conn.close()
    return [r["n"] for r in rows]
