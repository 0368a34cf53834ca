"""Operator bearer tokens (`tokens` table): random, stored as SHA-256, expiring."""

from __future__ import annotations

import asyncpg

from .database import Database


async def find_active(db: Database, token_hash: bytes) -> asyncpg.Record | None:
    async with db.platform() as conn:
        return await conn.fetchrow(
            "SELECT t.id AS token_id, u.id AS user_id, u.email, u.role FROM tokens t "
            "JOIN platform_users u ON u.id = t.platform_user_id "
            "WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > now() AND u.is_active",
            token_hash,
        )


async def create(db: Database, user_id, token_hash: bytes, ttl_seconds: int) -> asyncpg.Record:
    async with db.platform() as conn:
        await conn.execute("UPDATE platform_users SET last_login_at = now() WHERE id = $1", user_id)
        return await conn.fetchrow(
            "INSERT INTO tokens (token_hash, platform_user_id, expires_at) "
            "VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING id, expires_at",
            token_hash,
            user_id,
            float(ttl_seconds),
        )


async def revoke(db: Database, token_id) -> None:
    async with db.platform() as conn:
        await conn.execute("UPDATE tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", token_id)
