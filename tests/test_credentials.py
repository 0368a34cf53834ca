"""Sync tokens and API keys: format, checksum, signature, expiry."""

import time

import pytest

from sync_server.domain.accounts import api_keys, sync_tokens

SECRET = "s" * 40


def test_sync_token_round_trip_and_globs():
    token, exp = sync_tokens.mint(
        SECRET, customer_id="c1", customer_slug="acme", docs=["fleet", "tracks/*"], mode="r", ttl_seconds=60
    )
    grant = sync_tokens.verify(SECRET, token)
    assert grant.customer_slug == "acme" and grant.expires_at == exp and not grant.can_write
    assert grant.allows("fleet") and grant.allows("tracks/v1/2026-11-22")
    assert not grant.allows("fleet2") and not grant.allows("routes/x")


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"), "invalid token signature"),
        (lambda t: "nonsense", "malformed token"),
        (lambda t: "", "malformed token"),
    ],
)
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


def test_verified_tokens_answer_as_verify_does_and_stay_bounded():
    tokens = sync_tokens.VerifiedTokens(SECRET, limit=3, longest=600)
    token, exp = sync_tokens.mint(SECRET, customer_id="c1", customer_slug="acme", docs=["fleet"], ttl_seconds=5)
    assert tokens.verify(token) == sync_tokens.verify(SECRET, token) and len(tokens) == 1
    assert tokens.verify(token).expires_at == exp and len(tokens) == 1  # the second use is the kept answer
    # a kept token expires as it would unkept, and is dropped
    with pytest.raises(sync_tokens.TokenError, match="expired"):
        tokens.verify(token, now=exp + 1)
    assert len(tokens) == 0
    # what does not verify is never kept: a forged signature next to a kept token, another secret
    tokens.verify(token)
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    with pytest.raises(sync_tokens.TokenError, match="signature"):
        tokens.verify(forged)
    foreign, _ = sync_tokens.mint("t" * 40, customer_id="c1", customer_slug="acme", docs=["*"])
    with pytest.raises(sync_tokens.TokenError, match="signature"):
        tokens.verify(foreign)
    assert len(tokens) == 1
    # bounded in count (the oldest out first) and in length (a long token is verified every time)
    minted = [sync_tokens.mint(SECRET, customer_id=f"c{i}", customer_slug="acme", docs=["*"])[0] for i in range(5)]
    for t in minted:
        tokens.verify(t)
    assert len(tokens) == 3
    long_token, _ = sync_tokens.mint(SECRET, customer_id="c9", customer_slug="acme", docs=["x" * 256, "y" * 256])
    assert len(long_token) > 600 and tokens.verify(long_token).customer_id == "c9" and len(tokens) == 3


def test_grant_globs_answer_the_same_when_remembered():
    grant = sync_tokens.verify(
        SECRET, sync_tokens.mint(SECRET, customer_id="c1", customer_slug="acme", docs=["tracks/*", "fleet"])[0]
    )
    for _ in range(2):
        assert grant.allows("tracks/v1") and grant.allows("fleet") and not grant.allows("fleet/x")
        assert not grant.allows("tracks") and grant.allows("tracks/a/b")


@pytest.mark.parametrize(
    "docs, mode, ttl",
    [([], "rw", 60), (["x"], "w", 60), (["x"], "rw", 0), (["x"], "rw", sync_tokens.MAX_TTL_SECONDS + 1)],
)
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
        await key_store.insert(
            conn,
            customer_id=cid,
            name="k",
            prefix=api_keys.display_prefix(raw),
            key_hash=api_keys.digest(raw),
            environment="live",
            permissions=key_fields.get("permissions", ["fleet:read"]),
            expires_at=key_fields.get("expires_at"),
        )
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
    cid, raw = await _customer_with_key(db, expires_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
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


async def test_key_cache_skips_the_lookup_until_forgotten_and_checks_expiry_on_hits(db):
    import datetime as dt

    from storage import DatabaseRegistry

    registry = DatabaseRegistry(db)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    cid, raw = await _customer_with_key(db, expires_at=expires)
    cache = api_keys.KeyCache(ttl=60)
    principal = await api_keys.authenticate(registry, raw, cache=cache)
    async with db.tenant(cid) as conn:  # revoked behind the node's back (another node, plain SQL)
        await conn.execute("UPDATE api_keys SET revoked_at = now()")
    # Within the TTL this node still accepts it: the documented cross-node bound.
    assert await api_keys.authenticate(registry, raw, cache=cache) == principal
    # A cached key past its expiry is not taken from the cache.
    with pytest.raises(api_keys.KeyRejected, match="revoked"):
        await api_keys.authenticate(registry, raw, now=expires + dt.timedelta(seconds=1), cache=cache)
    # The revocation event of this node forgets it at once.
    async with db.tenant(cid) as conn:
        await conn.execute("UPDATE api_keys SET revoked_at = NULL")
    await api_keys.authenticate(registry, raw, cache=cache)
    async with db.tenant(cid) as conn:
        await conn.execute("UPDATE api_keys SET revoked_at = now()")
    await cache.on_key_revoked(key_id=principal.key_id, customer_id=principal.customer_id)
    with pytest.raises(api_keys.KeyRejected, match="revoked"):
        await api_keys.authenticate(registry, raw, cache=cache)
    # Refusals are never cached: the key works again as soon as it is valid again.
    async with db.tenant(cid) as conn:
        await conn.execute("UPDATE api_keys SET revoked_at = NULL")
    assert await api_keys.authenticate(registry, raw, cache=cache) == principal
    # Suspension forgets every key of the customer.
    async with db.tenant(cid) as conn:
        await conn.execute("UPDATE customers SET status = 'suspended'")
    await cache.on_customer_suspended(customer_id=cid)
    with pytest.raises(api_keys.KeyRejected, match="suspended"):
        await api_keys.authenticate(registry, raw, cache=cache)


def test_key_cache_drops_answers_read_before_an_invalidation_and_honours_ttl(monkeypatch):
    principal = api_keys.ApiKeyPrincipal("k1", "c1", "acme", "live", frozenset({"admin"}))
    cache = api_keys.KeyCache(ttl=2)
    generation = cache.generation  # a lookup starts ...
    cache.forget(key_id="k1")  # ... the key is revoked meanwhile ...
    cache.put(b"h", principal, None, generation)  # ... and its stale answer must not be kept
    assert cache.get(b"h") is None
    cache.put(b"h", principal, None, cache.generation)
    assert cache.get(b"h") == (principal, None)
    clock = time.monotonic() + 2.5
    monkeypatch.setattr(api_keys.time, "monotonic", lambda: clock)
    assert cache.get(b"h") is None  # past the TTL: looked up again
    disabled = api_keys.KeyCache(ttl=0)
    disabled.put(b"h", principal, None, disabled.generation)
    assert disabled.get(b"h") is None


async def test_expiries_close_every_connection_of_their_second_and_no_other():
    """Many connections of one token share its expiry second (one timer for all of them); a
    connection of an earlier second, joining later, still closes first; a later one stays open."""
    import asyncio
    import math

    from sync_server.sync.connection import Connection
    from sync_server.sync.credentials import Credentials, Session
    from sync_server.sync.hooks import Access

    async def send(frame):
        pass

    credentials = Credentials(None, None)
    now = time.time()
    shared = math.ceil(now) + 2  # a whole second (token expiries are), at least a second away
    closed_at: dict[str, float] = {}

    def watch(name: str, expires_at: float) -> Connection:
        conn = Connection(send, customer_id="c1", doc=name, can_write=True, queue_limit=10)
        conn.on_abort = lambda: closed_at.setdefault(name, time.time())
        credentials.watch(conn, Session("acme", "t", None, Access("c1", True, "token", expires_at=expires_at), False))
        return conn

    same = [watch(f"same{i}", shared - 0.5) for i in range(5)]
    earlier = watch("earlier", shared - 1.5)
    later = watch("later", shared + 60)
    await asyncio.sleep(shared - time.time() + 0.3)
    assert all(c.close_code == 4401 for c in [*same, earlier]) and later.close_code is None
    assert closed_at["earlier"] < min(closed_at[c.doc] for c in same) and "later" not in closed_at
    assert all(shared - 1 <= closed_at[c.doc] <= shared + 0.3 for c in same)
    credentials.forget(later)
