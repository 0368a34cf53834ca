"""The websocket endpoint at protocol level (a raw peer on `websockets`, real server, real PostgreSQL):
handshake order, refusals, malformed input closing only the sender, awareness bookkeeping."""
from __future__ import annotations

import asyncio

import pycrdt
import pytest

from sync_server import protocol

from .conftest import TEST_SECRET
from .support import sync_peers
from .support.sync_peers import RawPeer


@pytest.fixture
async def customer(database_url):
    return await sync_peers.create_customer(database_url)


def url(server, customer, doc="fleet", **query):
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{server.ws_url}/sync/{customer.slug}/{doc}" + (f"?{q}" if q else "")


async def test_join_gets_step1_and_update_is_echoed_and_stored(server, customer, database_url):
    tok = sync_peers.token(TEST_SECRET, customer)
    a = await RawPeer.connect(url(server, customer, token=tok))
    first = await a.recv()
    assert first[:2] == bytes((0, 0))  # server sync step 1 on join
    await a.sync()
    src = pycrdt.Doc()
    src["m"] = m = pycrdt.Map()
    m["k"] = "v"
    update = src.get_update()
    await a.send(protocol.update_frame(update))
    echo = await a.recv()
    assert echo == protocol.update_frame(update)  # relayed as the very same bytes
    await a.close()
    for _ in range(100):
        count, _, rows = await sync_peers.stored_updates(database_url, customer, "fleet")
        if count:
            break
        await asyncio.sleep(0.05)
    assert rows == [update]
