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
            codes = [httpx.get(node.base_url + "/api/v1/vehicles", headers={"Authorization": "Bearer x"},
                               timeout=5) for _ in range(4)]
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
