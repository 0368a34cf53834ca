"""Operator (platform staff) sign-in: email + password (argon2: accounts.passwords) for a random
session token (`wop_...`, stored only as its SHA-256 in `tokens`, expiring). The same token is the
`Authorization: Bearer` of scripts (POST /api/v1/auth/login) and the value of the operator
console's HttpOnly cookie (POST /api/v1/operator/session); api.auth reads either.

Roles: `admin` may do everything; `staff` everything but destructive operations (deleting a
customer or plan, revoking API keys, decommissioning, tenant migrations) — each such route says so
with `api.auth.operator_required("admin")`, the server's refusal is the rule (the console only
mirrors it)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

import asyncpg

from storage import operator_sessions, platform_users
from storage.database import Database
from sync_server.domain.accounts import passwords

TOKEN_PREFIX = "wop_"
ROLES = ("admin", "staff")
COOKIE = "whs_operator"  # the console's session cookie (HttpOnly)

# Verified when the email is unknown, so a wrong email costs as long as a wrong password.
_dummy_hash: str | None = None


class SignInRejected(Exception):
    """Wrong email or password (or a deactivated operator): one answer for all."""


@dataclass(frozen=True)
class OperatorSession:
    raw: str  # the token: shown once, to the caller that signed in
    expires_at: dt.datetime
    user: asyncpg.Record


def digest(raw: str) -> bytes:
    return hashlib.sha256(raw.encode()).digest()


async def _verify(stored_hash: str, password: str) -> bool:
    return await asyncio.to_thread(passwords.verify_password, stored_hash, password)


async def sign_in(db: Database, email: str, password: str, ttl_seconds: int) -> OperatorSession:
    global _dummy_hash
    user = await platform_users.find_by_email(db, email)
    if user is None or not user["is_active"]:
        if _dummy_hash is None:
            _dummy_hash = await asyncio.to_thread(passwords.hash_password, secrets.token_hex(16))
        await _verify(_dummy_hash, password)
        raise SignInRejected
    if not await _verify(user["password_hash"], password):
        raise SignInRejected
    if passwords.needs_rehash(user["password_hash"]):
        new_hash = await asyncio.to_thread(passwords.hash_password, password)
        await platform_users.set_password_hash(db, user["id"], new_hash)
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session = await operator_sessions.create(db, user["id"], digest(raw), ttl_seconds)
    return OperatorSession(raw, session["expires_at"], user)


async def find(db: Database, raw: str) -> asyncpg.Record | None:
    """The active session of a token (None: unknown, revoked, expired or its operator deactivated)."""
    if not raw or len(raw) > 200:
        return None
    return await operator_sessions.find_active(db, digest(raw))


async def sign_out(db: Database, token_id) -> None:
    await operator_sessions.revoke(db, token_id)
