"""Customer-user sessions of the dispatcher web app: sign-in with email + password (argon2, the
same hasher as operators: accounts.passwords), a session cookie, CSRF tokens, role permissions.

The cookie: `wus1.<customer id>.<43 random url-safe chars>` (HttpOnly, SameSite=Lax, Secure over
TLS). The customer id routes the lookup to the customer's database (tenant data, RLS); only the
SHA-256 of the whole value is stored. CSRF: a state-changing request authenticated by the cookie
must carry `X-CSRF-Token`, equal to the HMAC of the session cookie (a keyed double submit: the app
reads it from the sign-in answer or the readable `whs_csrf` cookie; another site can neither read
it nor make it). Sign-out, a password change or deleting the user ends sessions at once: every
request reads its session row, and sync tokens minted for a session carry its id (`sid`), checked
when a websocket opens.

Roles map to the API-key permissions the REST routes already check (api.auth.customer_required):
admin -> everything; member -> read and write sync/fleet, read tracking; viewer -> read only (its
sync tokens are mode `r`, the websocket endpoint drops its writes).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from storage import customer_users as user_store
from storage import tenants, user_sessions
from storage.registry import DatabaseRegistry
from sync_server.domain.accounts import passwords

COOKIE = "whs_session"
CSRF_COOKIE = "whs_csrf"
CSRF_HEADER = "x-csrf-token"
VERSION = "wus1"
MAX_COOKIE = 120  # characters: anything longer is not one of ours (checked before any parsing)
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"admin"}),
    "member": frozenset({"sync:read", "sync:write", "fleet:read", "fleet:write", "tracking:read"}),
    "viewer": frozenset({"sync:read", "fleet:read", "tracking:read"}),
}
_CSRF_LABEL = b"webhost-sync csrf v1|"
APP_DOCS = (
    "fleet",
    "dispatch",
)  # what an app session may mint sync tokens for (fleet: live, events; dispatch: notes, tasks)

# Verified when the customer or email is unknown, so a wrong email costs as long as a wrong password.
_dummy_hash: str | None = None


class SessionRejected(Exception):
    """The session is unusable; `status`/`code` are the API error, the message safe to show."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SessionPrincipal:
    """A signed-in customer user: what api.auth puts on the call, shaped like an API key principal
    (customer_id, customer_slug, permissions, has) so every customer route accepts it."""

    session_id: str
    user_id: str
    email: str
    name: str
    role: str
    customer_id: str
    customer_slug: str
    customer_name: str
    csrf_token: str

    @property
    def permissions(self) -> frozenset[str]:
        return ROLE_PERMISSIONS.get(self.role, frozenset())

    @property
    def key_id(self) -> str:  # what logs and rate limits name the credential by
        return f"session:{self.session_id}"

    def has(self, permission: str) -> bool:
        perms = self.permissions
        return "admin" in perms or permission in perms


def digest(raw: str) -> bytes:
    return hashlib.sha256(raw.encode()).digest()


def csrf_token(secret_key: str, raw_cookie: str) -> str:
    return hmac.new(secret_key.encode(), _CSRF_LABEL + raw_cookie.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret_key: str, raw_cookie: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(secret_key, raw_cookie), presented or "")


def customer_of(raw: str) -> uuid.UUID | None:
    """The customer id a well-formed cookie names (None: not one of ours)."""
    if not raw or len(raw) > MAX_COOKIE:
        return None
    parts = raw.split(".")
    if len(parts) != 3 or parts[0] != VERSION or len(parts[2]) != 43:
        return None
    try:
        return uuid.UUID(parts[1])
    except ValueError:
        return None


async def _verify(stored_hash: str | None, password: str) -> bool:
    global _dummy_hash
    if stored_hash is None:
        if _dummy_hash is None:
            _dummy_hash = await asyncio.to_thread(passwords.hash_password, secrets.token_hex(16))
        await asyncio.to_thread(passwords.verify_password, _dummy_hash, password)
        return False
    return await asyncio.to_thread(passwords.verify_password, stored_hash, password)


async def sign_in(
    registry: DatabaseRegistry,
    secret_key: str,
    *,
    customer_slug: str,
    email: str,
    password: str,
    ttl_seconds: int,
    user_agent: str = "",
) -> tuple[str, SessionPrincipal]:
    """A new session (raw cookie value, principal); SessionRejected 401 for any wrong part (the
    same answer and about the same time whichever part was wrong), 403 for a suspended customer."""
    customer = await tenants.find_by_slug(registry.shared, customer_slug)
    user = None
    if customer is not None:
        db = await registry.for_customer(customer["id"])
        async with db.tenant(customer["id"]) as conn:
            user = await user_store.find_for_sign_in(conn, email)
    if not await _verify(user["password_hash"] if user is not None else None, password) or customer is None:
        raise SessionRejected(401, "invalid_credentials", "customer, email or password is wrong")
    if customer["status"] != "active":
        raise SessionRejected(403, "customer_suspended", "customer account is suspended")
    assert user is not None
    if passwords.needs_rehash(user["password_hash"]):
        new_hash = await asyncio.to_thread(passwords.hash_password, password)
    else:
        new_hash = None
    raw = f"{VERSION}.{customer['id']}.{secrets.token_urlsafe(32)}"
    db = await registry.for_customer(customer["id"])
    async with db.tenant(customer["id"]) as conn:
        if new_hash is not None:
            await user_store.set_password_hash(conn, user["id"], new_hash)
        await user_sessions.create(conn, customer["id"], user["id"], digest(raw), ttl_seconds, user_agent)
    return raw, await authenticate(registry, secret_key, raw)


async def authenticate(registry: DatabaseRegistry, secret_key: str, raw: str) -> SessionPrincipal:
    customer_id = customer_of(raw)
    if customer_id is None:
        raise SessionRejected(401, "unauthorized", "session cookie is malformed")
    db = await registry.for_customer(customer_id)
    async with db.tenant(customer_id) as conn:
        row = await user_sessions.find_active(conn, digest(raw))
    if row is None:
        raise SessionRejected(401, "unauthorized", "signed out or session expired")
    if row["customer_status"] != "active":
        raise SessionRejected(403, "customer_suspended", "customer account is suspended")
    return SessionPrincipal(
        str(row["session_id"]),
        str(row["user_id"]),
        row["email"],
        row["name"],
        row["role"],
        str(row["customer_id"]),
        row["customer_slug"],
        row["customer_name"],
        csrf_token(secret_key, raw),
    )


async def sign_out(registry: DatabaseRegistry, principal: SessionPrincipal) -> None:
    db = await registry.for_customer(principal.customer_id)
    async with db.tenant(principal.customer_id) as conn:
        await user_sessions.revoke(conn, uuid.UUID(principal.session_id))


async def session_active(registry: DatabaseRegistry, customer_id: str, session_id: str) -> bool:
    """Whether a sync token's session (its `sid`) is still signed in."""
    try:
        sid = uuid.UUID(session_id)
    except ValueError:
        return False
    db = await registry.for_customer(customer_id)
    async with db.tenant(customer_id) as conn:
        return await user_sessions.is_active(conn, sid)
