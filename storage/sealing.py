"""Secrets at rest: the one place that encrypts and decrypts a stored credential.

    from storage import sealing
    stored = sealing.seal("postgresql://u:pw@host/db", "deployments.database_url")   # -> "sealed:v1:..."
    url = sealing.open(stored, "deployments.database_url")

AES-256-GCM (the `cryptography` package) under ENCRYPTION_KEY. A sealed value is text,
`sealed:v1:<key id>:<base64url(nonce || ciphertext || tag)>`, so it fits the text (and jsonb) columns
that held the plaintext. The `purpose` is the associated data: a value sealed for one column (or one
row, when the caller puts the row's owner in it) does not open for another, so a sealed URL copied
into another customer's row is refused instead of routing that customer to the wrong database.

Keys rotate: every value names the key id it was sealed under (the first 8 bytes of a SHA-256 of
the key, hex); the keyring holds the primary key (ENCRYPTION_KEY, seals) and the old ones
(ENCRYPTION_OLD_KEYS, open only) until `webhost-sync rotate-key` has re-sealed every row under the
primary (`storage.secret_columns.reseal`).

The process holds one keyring, installed at start-up (`install`, from the settings, by the Runtime
and the CLI commands); storage code seals on write and opens on read, so callers above storage see
plaintext and never write it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "sealed:v1:"
_NONCE = 12
_AAD = b"webhost-sync sealed v1|"


class SealError(ValueError):
    """A value cannot be opened: not sealed, sealed under a key the ring does not hold, or altered
    (or sealed for another purpose). The message never contains the value."""


def parse_key(raw: str, name: str = "ENCRYPTION_KEY") -> bytes:
    """A 32-byte key from its base64 (standard or url-safe, padding optional) text."""
    text = raw.strip()
    try:
        key = base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} must be 32 bytes in base64 (make one: webhost-sync generate-key)") from None
    if len(key) != 32:
        raise ValueError(
            f"{name} must be 32 bytes in base64, got {len(key)} bytes (make one: webhost-sync generate-key)"
        )
    return key


def new_key() -> str:
    """A fresh key as ENCRYPTION_KEY takes it."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"webhost-sync key id|" + key).hexdigest()[:16]


@dataclass(frozen=True)
class Keyring:
    primary: bytes = field(repr=False)
    old: tuple[bytes, ...] = field(default=(), repr=False)

    @classmethod
    def from_text(cls, primary: str, old: str | None = None) -> Keyring:
        olds = tuple(parse_key(k, "ENCRYPTION_OLD_KEYS") for k in (old or "").split(",") if k.strip())
        return cls(parse_key(primary), olds)

    @property
    def primary_id(self) -> str:
        return key_id(self.primary)

    def _key(self, kid: str) -> bytes | None:
        for key in (self.primary, *self.old):
            if key_id(key) == kid:
                return key
        return None

    def seal(self, plaintext: str, purpose: str) -> str:
        nonce = os.urandom(_NONCE)
        body = AESGCM(self.primary).encrypt(nonce, plaintext.encode(), _AAD + purpose.encode())
        return f"{PREFIX}{self.primary_id}:{base64.urlsafe_b64encode(nonce + body).decode().rstrip('=')}"

    def open(self, sealed: str, purpose: str) -> str:
        if not is_sealed(sealed):
            raise SealError(f"{purpose}: the stored value is not sealed")
        kid, _, data = sealed[len(PREFIX) :].partition(":")
        key = self._key(kid)
        if key is None:
            raise SealError(
                f"{purpose}: sealed under key {kid}, which neither ENCRYPTION_KEY nor ENCRYPTION_OLD_KEYS holds"
            )
        try:
            raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
            return AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:], _AAD + purpose.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError):
            raise SealError(
                f"{purpose}: the sealed value does not open (altered, or sealed for another purpose)"
            ) from None

    def is_current(self, sealed: str) -> bool:
        """Sealed under the primary key (nothing for rotation to do)."""
        return is_sealed(sealed) and sealed[len(PREFIX) :].partition(":")[0] == self.primary_id


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


_ring: Keyring | None = None


def install(keyring: Keyring) -> None:
    """The keyring of this process (the Runtime and CLI commands install it from the settings)."""
    global _ring
    _ring = keyring


def keyring() -> Keyring:
    if _ring is None:
        raise RuntimeError(
            "no encryption keyring installed (storage.sealing.install): secrets cannot be read or stored"
        )
    return _ring


def seal(plaintext: str, purpose: str) -> str:
    """`plaintext` encrypted under the primary key, bound to `purpose` (e.g. "webhooks.secret/<id>")."""
    return keyring().seal(plaintext, purpose)


def open(sealed: str, purpose: str) -> str:  # noqa: A001 - the obvious name beside seal()
    """The plaintext of a value `seal` returned for the same purpose; SealError otherwise."""
    return keyring().open(sealed, purpose)


def seal_optional(plaintext: str | None, purpose: str) -> str | None:
    return None if plaintext is None else seal(plaintext, purpose)


def open_optional(sealed: str | None, purpose: str) -> str | None:
    return None if sealed is None else open(sealed, purpose)


__all__ = [
    "Keyring",
    "SealError",
    "install",
    "is_sealed",
    "keyring",
    "new_key",
    "open",
    "open_optional",
    "parse_key",
    "seal",
    "seal_optional",
]
