"""The shared limits on a single node without Redis: counted in memory, same answers."""

from __future__ import annotations

import httpx
import pytest

from .conftest import TEST_SECRET
from .support import sync_peers
from .support.server import ServerProcess
from .support.sync_peers import RawPeer
from .test_multinode import set_connection_limit


@pytest.fixture
async def customer(database_url):
    return await sync_peers.create_customer(database_url)


async def test_connection_limit_without_redis(server_env, database_url, customer, tmp_path):
    await set_connection_limit(database_url, 1)
    node = ServerProcess(server_env, log_path=tmp_path / "node.log").start()
    try:
        url = f"{node.ws_url}/sync/{customer.slug}/fleet?token={sync_peers.token(TEST_SECRET, customer)}"
        first = await RawPeer.connect(url)
        await first.sync()
        second = await RawPeer.connect(url)
        code, reason = await second.closed()
        assert (code, "connection limit" in reason) == (1013, True)
        await first.close()
        for _ in range(50):  # the slot comes back once the server has seen the first one leave
            third = await RawPeer.connect(url)
            try:
                await third.sync(timeout=2)
                break
            except Exception:
                continue
        else:
            pytest.fail("the freed slot never came back")
        await third.close()
    finally:
        node.stop()


async def test_connection_limits_off_lets_everybody_in(server_env, database_url, customer, tmp_path):
    await set_connection_limit(database_url, 1)
    node = ServerProcess({**server_env, "CONNECTION_LIMITS": "off"}, log_path=tmp_path / "node.log").start()
    try:
        url = f"{node.ws_url}/sync/{customer.slug}/fleet?token={sync_peers.token(TEST_SECRET, customer)}"
        peers = [await RawPeer.connect(url) for _ in range(3)]
        for peer in peers:
            await peer.sync()
        for peer in peers:
            await peer.close()
    finally:
        node.stop()


async def test_rest_rate_limit_without_redis(server_env, tmp_path):
    node = ServerProcess({**server_env, "REST_RATE_LIMIT_PER_MINUTE": "3"}, log_path=tmp_path / "node.log").start()
    try:
        import time

        for _attempt in range(3):
            window = int(time.time() // 60)
            codes = [
                httpx.get(node.base_url + "/api/v1/vehicles", headers={"Authorization": "Bearer x"}, timeout=5)
                for _ in range(4)
            ]
            if int(time.time() // 60) != window:
                continue
            assert [r.status_code for r in codes] == [401, 401, 401, 429]
            assert int(codes[3].headers["Retry-After"]) >= 1
            # Requests without a credential (health, trackers) are not counted.
            assert httpx.get(node.base_url + "/healthz", timeout=5).status_code == 200
            return
        pytest.fail("could not stay inside one rate-limit window")
    finally:
        node.stop()


# -- the REST rate limit's window, against real Redis and in memory ---------------------------------


@pytest.fixture(params=["redis", "memory"])
async def rate_limit_of(request, redis_url):
    """A RateLimit factory on real Redis (each test under its own prefix) or in memory."""
    import uuid

    import redis.asyncio as aioredis

    from sync_server.extensions.shared_limits import RateLimit

    client = aioredis.from_url(redis_url) if request.param == "redis" else None
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    yield lambda limit, window: RateLimit(limit, prefix, client, window=window)
    if client is not None:
        keys = [key async for key in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def _sleep_until_just_before_boundary(window: float, before: float) -> None:
    """Where a fixed window of `window` seconds of the wall clock would turn, minus `before`."""
    import asyncio
    import time

    now = time.time()
    target = (now // window + 1) * window - before
    if target - now < 0.05:
        target += window
    await asyncio.sleep(target - now)


async def test_a_burst_straddling_a_window_boundary_cannot_pass_the_limit(rate_limit_of):
    """The limit twice in a row, half a second before and right after where a clock window turns:
    fixed windows (the old rule) counted both halves separately and let 2x the limit through."""
    import asyncio

    limit, window = 20, 2.0
    rate = rate_limit_of(limit, window)
    await _sleep_until_just_before_boundary(window, 0.3)
    first = [await rate.hit("cred:burst") for _ in range(limit)]
    assert first == [None] * limit
    await asyncio.sleep(0.5)  # the wall-clock window has turned
    second = [await rate.hit("cred:burst") for _ in range(limit)]
    assert all(r is not None for r in second), f"{second.count(None)} more passed in {window} s"
    assert all(1 <= r <= window for r in second)


async def test_any_window_holds_at_most_the_limit_and_retry_after_lets_the_next_one_in(rate_limit_of):
    """Requests every 10 ms for 2.5 windows: in no span of `window` seconds are more than `limit`
    counted, the limit is reached again after each wait, and waiting Retry-After is enough."""
    import asyncio
    import time

    limit, window = 10, 1.0
    rate = rate_limit_of(limit, window)
    counted, refused = [], []  # (before, after) each request, and the refusals' Retry-After
    deadline = time.monotonic() + 2.5 * window
    while time.monotonic() < deadline:
        before = time.monotonic()
        answer = await rate.hit("cred:steady")
        after = time.monotonic()
        if answer is None:
            counted.append((before, after))
        else:
            refused.append(answer)
        await asyncio.sleep(0.01)
    # Each request was counted (on Redis's clock, or this process's) somewhere between its before
    # and after: any limit + 1 counted requests span at least the window, however late each was counted.
    for first, last in zip(counted, counted[limit:]):
        assert last[1] - first[0] >= window - 0.002, f"{limit + 1} counted within {last[1] - first[0]:.3f} s"
    assert len(counted) >= 2 * limit  # the window slides: the limit is reached again, not once
    assert refused and all(1 <= answer <= window for answer in refused)
    # Refused requests are not counted, and Retry-After is enough to be counted again.
    while (wait := await rate.hit("cred:steady")) is None:
        pass
    await asyncio.sleep(wait)
    assert await rate.hit("cred:steady") is None
    # Another credential has its own window.
    assert await rate.hit("cred:other") is None


async def test_in_memory_windows_forget_silent_credentials_and_stay_bounded():
    from sync_server.extensions.shared_limits import RateLimit

    rate = RateLimit(5, "p:", None, window=1.0, max_local=1000)
    for i in range(5000):  # distinct junk credentials within one window: capped, least recent out
        assert rate.hit_local(f"cred:{i}", 10_000) is None
    assert rate.local_credentials == 1000
    assert rate.hit_local("cred:late", 11_500) is None  # a window later: every silent one is dropped
    assert rate.local_credentials == 1
    for _ in range(4):
        assert rate.hit_local("cred:late", 11_600) is None
    assert rate.hit_local("cred:late", 11_700) == 1  # its first request leaves at 12,500 ms
    assert rate.hit_local("cred:late", 12_499) == 1
    assert rate.hit_local("cred:late", 12_500) is None
