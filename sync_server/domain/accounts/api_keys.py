"""Customer API keys: `whk_{live|test}_` + 22 base62 chars (>= 128 bits) + 6-char CRC32 checksum.

The checksum lets scanners and typos be rejected before any database lookup. Only the SHA-256 of
the whole key and a display prefix are stored. `authenticate` is the single place a presented key
becomes a principal; both REST and the websocket endpoint use it, with this node's `KeyCache`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
import zlib
from dataclasses import dataclass

from storage import api_keys as key_store
from storage.registry import DatabaseRegistry

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ENVIRONMENTS = ("live", "test")
BODY_LEN = 22  # 62**22 > 2**130
CHECK_LEN = 6  # 62**6 > 2**32
PREFIX_LEN = len("whk_live_") + 4
PERMISSIONS = (
    "admin",
    "sync:read",
    "sync:write",
    "fleet:read",
    "fleet:write",
    "tracking:read",
    "tracking:write",
    "billing:read",
    "billing:write",
    "webhooks:read",
    "webhooks:write",
)
LAST_USED_RESOLUTION = dt.timedelta(minutes=5)  # last_used_at is written at most this often per key


class KeyRejected(Exception):
    """The key is unusable; `code` is the API error code, the message safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ApiKeyPrincipal:
    key_id: str
    customer_id: str
    customer_slug: str
    environment: str
    permissions: frozenset[str]
    expires_at: dt.datetime | None = None  # when the key stops working (sync sockets close then)

    def has(self, permission: str) -> bool:
        return "admin" in self.permissions or permission in self.permissions


class KeyCache:
    """Keys this node accepted in the last `ttl` seconds, by SHA-256: a hit skips the database lookup
    (one round trip of every authenticated request).

    Only acceptances are kept (a refusal is always re-read), and the key's expiry is checked on every
    hit. Revoking a key ("api_key_revoked"), suspending/deleting a customer ("customer_suspended") or
    changing its credentials ("credentials_changed") forgets the entries at once, on every node
    (Runtime wires the events; they cross nodes on the control channel). A change made straight in
    the database, without an event, is seen here within `ttl` seconds.
    A lookup that started before an invalidation cannot put its (stale) answer back: `generation`.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.generation = 0  # bumped by every invalidation
        self._entries: dict[bytes, tuple[float, ApiKeyPrincipal, dt.datetime | None]] = {}

    def get(self, key_hash: bytes) -> tuple[ApiKeyPrincipal, dt.datetime | None] | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[key_hash]
            return None
        return entry[1], entry[2]

    def put(self, key_hash: bytes, principal: ApiKeyPrincipal, expires_at: dt.datetime | None, generation: int) -> None:
        """Remember an acceptance read while `generation` was current (dropped if it no longer is)."""
        if self.ttl <= 0 or generation != self.generation:
            return
        now = time.monotonic()
        if len(self._entries) >= self.max_entries:
            self._entries = {h: e for h, e in self._entries.items() if e[0] > now}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        self._entries[key_hash] = (now + self.ttl, principal, expires_at)

    def forget(self, *, key_id: str | None = None, customer_id: str | None = None) -> None:
        self.generation += 1
        self._entries = {
            h: e for h, e in self._entries.items() if e[1].key_id != key_id and e[1].customer_id != customer_id
        }

    async def on_key_revoked(self, key_id, **_ignored) -> None:
        self.forget(key_id=str(key_id))

    async def on_customer_suspended(self, customer_id, **_ignored) -> None:
        self.forget(customer_id=str(customer_id))

    async def on_credentials_changed(self, customer_id, **_ignored) -> None:
        self.forget(customer_id=str(customer_id))


def _base62(number: int, width: int) -> str:
    out = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        out.append(ALPHABET[rem])
    return "".join(reversed(out))


def _checksum(text: str) -> str:
    return _base62(zlib.crc32(text.encode()), CHECK_LEN)


def generate(environment: str = "live") -> str:
    if environment not in ENVIRONMENTS:
        raise ValueError(f"environment must be one of {ENVIRONMENTS}")
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LEN))
    head = f"whk_{environment}_{body}"
    return head + _checksum(head)


def is_well_formed(raw: str) -> bool:
    for env in ENVIRONMENTS:
        start = f"whk_{env}_"
        if raw.startswith(start) and len(raw) == len(start) + BODY_LEN + CHECK_LEN:
            head, check = raw[:-CHECK_LEN], raw[-CHECK_LEN:]
            return all(c in ALPHABET for c in raw[len(start) :]) and _checksum(head) == check
    return False


def digest(raw: str) -> bytes:
    return hashlib.sha256(raw.encode()).digest()


def display_prefix(raw: str) -> str:
    return raw[:PREFIX_LEN]


async def authenticate(
    registry: DatabaseRegistry, raw: str, now: dt.datetime | None = None, cache: KeyCache | None = None
) -> ApiKeyPrincipal:
    key_hash = digest(raw)
    now = now or dt.datetime.now(dt.UTC)
    generation = 0
    if cache is not None:
        hit = cache.get(key_hash)  # only well-formed keys are ever put there: no format check on a hit
        if hit is not None and (hit[1] is None or hit[1] > now):
            return hit[0]
        generation = cache.generation
    if not is_well_formed(raw):
        raise KeyRejected("invalid_api_key", "API key is malformed or its checksum does not match")
    row = await key_store.find_by_hash(registry.shared, key_hash)
    if row is None:
        raise KeyRejected("invalid_api_key", "API key not recognised")
    if row["revoked_at"] is not None:
        raise KeyRejected("api_key_revoked", "API key has been revoked")
    if row["expires_at"] is not None and row["expires_at"] <= now:
        raise KeyRejected("api_key_expired", "API key has expired")
    if row["customer_status"] != "active":
        raise KeyRejected("customer_suspended", "customer account is suspended")
    last_used = row["last_used_at"]
    if last_used is None or now - last_used >= LAST_USED_RESOLUTION:
        await key_store.touch_last_used(registry.shared, row["customer_id"], row["id"], now)
    principal = ApiKeyPrincipal(
        str(row["id"]),
        str(row["customer_id"]),
        row["customer_slug"],
        row["environment"],
        frozenset(row["permissions"]),
        row["expires_at"],
    )
    if cache is not None:
        cache.put(key_hash, principal, row["expires_at"], generation)
    return principal


async def revoke(rt, customer_id, key_id):
    """Revoke one of the customer's keys (a Runtime `rt`; None: no such key of this customer). Every
    node forgets it at once (`api_key_revoked`: cached principals dropped, its sockets closed)."""
    async with rt.db.tenant(customer_id) as conn:
        row = await key_store.revoke(conn, key_id)
    if row is not None:
        await rt.publish("api_key_revoked", customer_id=str(customer_id), key_id=str(key_id))
    return row
