"""Sync tokens: the short-lived credential a customer's back end mints (POST /api/v1/sync-tokens)
for its apps, and the websocket endpoint verifies. One module for both sides.

Format: `wst1.<base64url(JSON claims)>.<base64url(HMAC-SHA256(secret, "wst1." + claims))>`.
Claims: c (customer id), s (customer slug), d (doc patterns, globs such as `tracks/*`),
m (`rw` | `r`), iat, exp (epoch seconds), jti; sid when minted for a dispatcher app session
(accounts.user_sessions: the websocket endpoint then also checks that the session is still signed
in). Otherwise stateless: verification needs only the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache

VERSION = "wst1"
MAX_TTL_SECONDS = 24 * 3600
MODES = ("rw", "r")


class TokenError(ValueError):
    """The token is malformed, forged or expired; `reason` is safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SyncGrant:
    customer_id: str
    customer_slug: str
    docs: tuple[str, ...]
    mode: str
    expires_at: int
    token_id: str
    session_id: str = ""  # the app session it was minted for ("" for a back end's token)

    @property
    def can_write(self) -> bool:
        return self.mode == "rw"

    def allows(self, doc: str) -> bool:
        """Whether this grant covers `doc`; `*` in a pattern matches any characters, `/` included."""
        return _covers(self.docs, doc)


@lru_cache(maxsize=4096)
def _covers(patterns: tuple[str, ...], doc: str) -> bool:
    """Whether one of `patterns` matches `doc` (remembered: a fleet's phones join the same few
    documents with the same patterns, one answer each)."""
    return any(fnmatchcase(doc, pattern) for pattern in patterns)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, signed_part: str) -> str:
    return _b64(hmac.new(secret.encode(), signed_part.encode(), hashlib.sha256).digest())


def validate_request(docs: list[str], mode: str, ttl_seconds: int, max_ttl: int = MAX_TTL_SECONDS) -> None:
    """Raise ValueError naming the field when a mint request is out of bounds."""
    if not docs or not all(isinstance(d, str) and 0 < len(d) <= 256 for d in docs) or len(docs) > 100:
        raise ValueError("docs: 1 to 100 patterns of 1 to 256 characters")
    if mode not in MODES:
        raise ValueError("mode: must be 'rw' or 'r'")
    if not 1 <= ttl_seconds <= max_ttl:
        raise ValueError(f"ttl_seconds: must be between 1 and {max_ttl}")


def mint(
    secret: str,
    *,
    customer_id: str,
    customer_slug: str,
    docs: list[str],
    mode: str = "rw",
    ttl_seconds: int = 3600,
    now: float | None = None,
    max_ttl: int = MAX_TTL_SECONDS,
    session_id: str | None = None,
) -> tuple[str, int]:
    """A new token and its expiry (epoch seconds)."""
    validate_request(docs, mode, ttl_seconds, max_ttl)
    issued = int(now if now is not None else time.time())
    expires = issued + ttl_seconds
    claims = {
        "c": str(customer_id),
        "s": customer_slug,
        "d": list(docs),
        "m": mode,
        "iat": issued,
        "exp": expires,
        "jti": secrets.token_hex(8),
    }
    if session_id:
        claims["sid"] = str(session_id)
    body = f"{VERSION}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
    return f"{body}.{_sign(secret, body)}", expires


def verify(secret: str, token: str, now: float | None = None) -> SyncGrant:
    parts = token.split(".") if token else []
    if len(parts) != 3 or parts[0] != VERSION:
        raise TokenError("malformed token")
    body = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_sign(secret, body), parts[2]):
        raise TokenError("invalid token signature")
    try:
        claims = json.loads(_unb64(parts[1]))
        grant = SyncGrant(
            str(claims["c"]),
            str(claims["s"]),
            tuple(claims["d"]),
            str(claims["m"]),
            int(claims["exp"]),
            str(claims.get("jti", "")),
            str(claims.get("sid", "")),
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise TokenError("malformed token") from None
    if grant.mode not in MODES:
        raise TokenError("malformed token")
    if grant.expires_at <= (now if now is not None else time.time()):
        raise TokenError("token expired")
    return grant


class VerifiedTokens:
    """The tokens this node verified lately, by their whole text (signature included): a phone that
    reconnects with the token it has (every drop of a flaky network, a fleet after a node restart) is
    not verified again. Only tokens that verified are kept, and their expiry is checked on every
    use, so an answer is the one `verify` gives (tokens are stateless: there is nothing to revoke;
    a session's sign-out and a customer's suspension are checked by the caller each time).
    Bounded: `limit` tokens of at most `longest` characters, the oldest out first."""

    __slots__ = ("secret", "limit", "longest", "_grants")

    def __init__(self, secret: str, limit: int = 4096, longest: int = 2048) -> None:
        self.secret = secret
        self.limit = limit
        self.longest = longest
        self._grants: dict[str, SyncGrant] = {}

    def verify(self, token: str, now: float | None = None) -> SyncGrant:
        grants = self._grants
        grant = grants.get(token)
        if grant is None:
            grant = verify(self.secret, token, now)
            if len(token) <= self.longest and self.limit > 0:
                if len(grants) >= self.limit:
                    del grants[next(iter(grants))]
                grants[token] = grant
        elif grant.expires_at <= (now if now is not None else time.time()):
            del grants[token]
            raise TokenError("token expired")
        return grant

    def __len__(self) -> int:
        return len(self._grants)


def looks_like_token(value: str) -> bool:
    return value.startswith(VERSION + ".")
