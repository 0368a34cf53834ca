"""Per-vehicle device secrets for trackers that post positions directly (OsmAnd-style ingestion).

Shown once when a vehicle is created or its secret rotated; only the SHA-256 is stored
(vehicles.device_secret_hash). `matches` compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "whd_"


def generate() -> str:
    return PREFIX + secrets.token_urlsafe(24)


def digest(raw: str) -> bytes:
    return hashlib.sha256(raw.encode()).digest()


def matches(stored_hash: bytes | None, raw: str) -> bool:
    return stored_hash is not None and hmac.compare_digest(bytes(stored_hash), digest(raw))
