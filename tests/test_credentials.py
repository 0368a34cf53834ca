"""Sync tokens and API keys: format, checksum, signature, expiry."""
import time

import pytest

from sync_server import api_keys, sync_tokens

SECRET = "s" * 40


def test_sync_token_round_trip_and_globs():
    token, exp = sync_tokens.mint(SECRET, customer_id="c1", customer_slug="acme", docs=["fleet", "tracks/*"],
                                  mode="r", ttl_seconds=60)
    grant = sync_tokens.verify(SECRET, token)
    assert grant.customer_slug == "acme" and grant.expires_at == exp and not grant.can_write
    assert grant.allows("fleet") and grant.allows("tracks/v1/2026-11-22")
    assert not grant.allows("fleet2") and not grant.allows("routes/x")


@pytest.mark.parametrize("mutate, reason", [
    (lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"), "invalid token signature"),
    (lambda t: "nonsense", "malformed token"),
    (lambda t: "", "malformed token"),
])
def test_sync_token_tampering_is_refused(mutate, reason):
    token, _ = sync_tokens.mint(SECRET, customer_id="c1", customer_slug="acme", docs=["*"])
    with pytest.raises(sync_tokens.TokenError) as info:
        sync_tokens.verify(SECRET, mutate(token))
    assert info.value.reason == reason


def test_sync_token_from_another_secret_or_expired_is_refused():
    token, _ = sync_tokens.mint(SECRET, customer_id="c1", customer_slug="acme", docs=["*"], ttl_seconds=5)
    with pytest.raises(sync_tokens.TokenError):
        sync_tokens.verify("t" * 40, token)
    with pytest.raises(sync_tokens.TokenError, match="expired"):
        sync_tokens.verify(SECRET, token, now=time.time() + 6)


@pytest.mark.parametrize("docs, mode, ttl", [([], "rw", 60), (["x"], "w", 60), (["x"], "rw", 0),
                                             (["x"], "rw", sync_tokens.MAX_TTL_SECONDS + 1)])
def test_sync_token_request_bounds(docs, mode, ttl):
    with pytest.raises(ValueError):
        sync_tokens.mint(SECRET, customer_id="c", customer_slug="s", docs=docs, mode=mode, ttl_seconds=ttl)


def test_api_key_format_and_checksum():
    key = api_keys.generate("live")
    assert key.startswith("whk_live_") and len(key) == 9 + 22 + 6
    assert api_keys.is_well_formed(key)
    assert api_keys.is_well_formed(api_keys.generate("test"))
    typo = key[:12] + ("a" if key[12] != "a" else "b") + key[13:]
    assert not api_keys.is_well_formed(typo)
    assert not api_keys.is_well_formed("whk_prod_" + key[9:])
    assert not api_keys.is_well_formed(key + "x")
    assert len({api_keys.generate() for _ in range(100)}) == 100


async def _customer_with_key(db, **key_fields):
    from storage import api_keys as key_store

    raw = api_keys.generate("live")
    async with db.operator("test_setup") as conn:
        cid = await conn.fetchval("INSERT INTO customers (slug, name) VALUES ('acme', 'Acme') RETURNING id")
        await key_store.insert(conn, customer_id=cid, name="k", prefix=api_keys.display_prefix(raw),
                               key_hash=api_keys.digest(raw), environment="live",
                               permissions=key_fields.get("permissions", ["fleet:read"]),
                               expires_at=key_fields.get("expires_at"))
    return cid, raw


async def test_api_key_authenticates_and_records_last_use_sparingly(db):
    from storage import DatabaseRegistry

    cid, raw = await _customer_with_key(db)
    registry = DatabaseRegistry(db)
    principal = await api_keys.authenticate(registry, raw)
    assert principal.customer_id == str(cid) and principal.has("fleet:read") and not principal.has("admin")
    async with db.tenant(cid) as conn:
        first = await conn.fetchval("SELECT last_used_at FROM api_keys")
    assert first is not None
    await api_keys.authenticate(registry, raw)
    async with db.tenant(cid) as conn:
        assert await conn.fetchval("SELECT last_used_at FROM api_keys") == first  # no write per request


async def test_revoked_expired_unknown_and_suspended_keys_are_refused(db):
    import datetime as dt

    from storage import DatabaseRegistry

    registry = DatabaseRegistry(db)
    cid, raw = await _customer_with_key(db, expires_at=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
    with pytest.raises(api_keys.KeyRejected, match="expired"):
        await api_keys.authenticate(registry, raw)
    async with db.tenant(cid) as conn:
        await conn.execute("UPDATE api_keys SET expires_at = NULL, revoked_at = now()")
    with pytest.raises(api_keys.KeyRejected, match="revoked"):
        await api_keys.authenticate(registry, raw)
    async with db.tenant(cid) as conn:
        await conn.execute("UPDATE api_keys SET revoked_at = NULL")
        await conn.execute("UPDATE customers SET status = 'suspended'")
    with pytest.raises(api_keys.KeyRejected, match="suspended"):
        await api_keys.authenticate(registry, raw)
    with pytest.raises(api_keys.KeyRejected, match="not recognised"):
        await api_keys.authenticate(registry, api_keys.generate("live"))
