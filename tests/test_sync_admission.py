"""SyncAccess.authenticate for a fleet reconnecting at once (issue 20): while the admission cache has
no answer for a customer, concurrent joins read the customer once between them; a read does not
outlive an invalidation for the joins that come after it, and a join that goes away mid-read does
not take the others' read with it. Real PostgreSQL; the one thing counted is storage.tenants' read."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from storage import tenants
from storage.registry import DatabaseRegistry
from sync_server.domain.accounts import api_keys, sync_access, sync_tokens
from sync_server.domain.accounts.admission_cache import AdmissionCache
from sync_server.sync.hooks import Refused

from .conftest import TEST_SECRET
from .support import sync_peers


@pytest.fixture
def reads(monkeypatch):
    """How often the customer row was read (the real read runs)."""
    counted: list[str] = []
    real = tenants.find_by_slug

    async def find_by_slug(database, slug):
        counted.append(slug)
        row = await real(database, slug)
        await asyncio.sleep(0.05)  # an answer that takes a while, as under a storm: askers pile up
        return row

    monkeypatch.setattr(sync_access.tenants, "find_by_slug", find_by_slug)
    return counted


async def test_a_storm_of_joins_reads_the_customer_once_and_again_after_an_invalidation(db, database_url, reads):
    customer = await sync_peers.create_customer(database_url, "storm")
    token, _ = sync_tokens.mint(TEST_SECRET, customer_id=customer.id, customer_slug=customer.slug, docs=["*"])
    cache = AdmissionCache(30)
    access = sync_access.SyncAccess(DatabaseRegistry(db), TEST_SECRET, api_keys.KeyCache(30), cache)

    joins = [access.authenticate(customer.slug, f"van-{i}", token, None) for i in range(200)]
    granted = await asyncio.gather(*joins)
    assert {a.customer_id for a in granted} == {customer.id} and all(a.can_write for a in granted)
    assert reads == [customer.slug]  # 200 joins, one read

    await access.authenticate(customer.slug, "van-0", token, None)
    assert len(reads) == 1  # the cache answers now

    # suspended while a wave is being admitted: the wave that started before shares the old read,
    # the joins after the invalidation read again and are refused
    cache.forget_customer(customer.id)
    first_wave = [asyncio.ensure_future(access.authenticate(customer.slug, "a", token, None)) for _ in range(20)]
    await asyncio.sleep(0.01)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE customers SET status = 'suspended' WHERE id = $1", customer.id)
    finally:
        await conn.close()
    cache.forget_customer(customer.id)  # what the customer_suspended event does
    second_wave = [access.authenticate(customer.slug, "b", token, None) for _ in range(20)]
    outcomes = await asyncio.gather(*second_wave, return_exceptions=True)
    assert all(isinstance(o, Refused) and o.reason == "customer suspended" for o in outcomes), outcomes
    assert all(a.customer_id == customer.id for a in await asyncio.gather(*first_wave))
    assert len(reads) == 3  # one per wave


async def test_a_join_that_goes_away_mid_read_leaves_the_others_their_read(db, database_url, reads):
    customer = await sync_peers.create_customer(database_url, "leaver")
    token, _ = sync_tokens.mint(TEST_SECRET, customer_id=customer.id, customer_slug=customer.slug, docs=["*"])
    access = sync_access.SyncAccess(DatabaseRegistry(db), TEST_SECRET, api_keys.KeyCache(30), AdmissionCache(30))
    joins = [asyncio.ensure_future(access.authenticate(customer.slug, "fleet", token, None)) for _ in range(10)]
    await asyncio.sleep(0.01)
    joins[0].cancel()  # the phone that started the read hangs up
    rest = await asyncio.gather(*joins[1:])
    assert all(a.customer_id == customer.id for a in rest) and reads == [customer.slug]
    assert joins[0].cancelled()
