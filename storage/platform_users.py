"""Operators (platform staff). A platform table: no tenant scope."""

from __future__ import annotations

from .database import Database


async def upsert(db: Database, email: str, password_hash: str, role: str) -> str:
    async with db.platform() as conn:
        row = await conn.fetchrow(
            "INSERT INTO platform_users (email, password_hash, role) VALUES ($1, $2, $3) "
            "ON CONFLICT (lower(email)) DO UPDATE SET password_hash = EXCLUDED.password_hash, role = EXCLUDED.role, "
            "is_active = true RETURNING id",
            email.strip(),
            password_hash,
            role,
        )
    return str(row["id"])


async def find_by_email(db: Database, email: str):
    async with db.platform() as conn:
        return await conn.fetchrow(
            "SELECT id, email, password_hash, role, is_active FROM platform_users WHERE lower(email) = lower($1)",
            email.strip(),
        )


async def set_password_hash(db: Database, user_id, password_hash: str) -> None:
    async with db.platform() as conn:
        await conn.execute("UPDATE platform_users SET password_hash = $2 WHERE id = $1", user_id, password_hash)
