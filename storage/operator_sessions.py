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
