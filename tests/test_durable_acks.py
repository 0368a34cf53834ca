"""Durable acknowledgements (sync/control.py DURABLE, opt-in with ?ack=1): an opted-in client is told
how many of its update messages are committed only once doc_updates holds them; stock y-websocket
clients (1.5.4, 2.1.0, 3.1.0, real JS) that did not opt in never receive the message, and ignore it
when they do opt in. Real server process, real PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import pycrdt
import pytest

from sync_server.sync import control, protocol

from .conftest import TEST_SECRET
from .support import sync_peers
from .support.server import ServerProcess
from .support.sync_peers import RawPeer

UPDATES = 40


@pytest.fixture
def slow_commit(server_env, tmp_path):
    """A node whose group commit waits its longest (20 ms): an acknowledgement sent early is seen."""
    proc = ServerProcess({**server_env, "SYNC_COMMIT_WINDOW_MS": "20"}, log_path=tmp_path / "server.log").start()
    yield proc
    proc.stop()


async def _stored_keys(database_url, customer) -> set[str]:
    doc = await sync_peers.stored_doc(database_url, customer, "fleet")
    return set(doc.get("m", type=pycrdt.Map).keys())


async def test_acknowledged_only_once_committed(slow_commit, database_url):
    customer = await sync_peers.create_customer(database_url)
    token = sync_peers.token(TEST_SECRET, customer)
    url = f"{slow_commit.ws_url}/sync/{customer.slug}/fleet?token={token}"
    peer = await RawPeer.connect(url + "&ack=1")
    plain = await RawPeer.connect(url)
    await peer.sync()
    await plain.sync()

    local = pycrdt.Doc()
    edits = local.get("m", type=pycrdt.Map)
    sent: list[str] = []
    acks: list[int] = []
    for i in range(UPDATES):
        before = local.get_state()
        edits[f"k{i}"] = i
        await peer.send(protocol.update_frame(local.get_update(before)))
        sent.append(f"k{i}")
        if i % 10 == 9:
            await asyncio.sleep(0.1)  # a few group commits
    # the step 2 of the sync counts as one update message: the first edit is message 2
    messages = 1 + UPDATES
    while not acks or acks[-1] < messages:
        frame = await peer.recv(timeout=10)
        if not control.is_control(frame):
            continue
        kind, count = control.read_server_frame(frame)
        assert kind == control.DURABLE
        stored = await _stored_keys(database_url, customer)  # at the instant of the ack
        covered = sent[: max(0, count - 1)]
        assert set(covered) <= stored, f"ack {count} before {sorted(set(covered) - stored)} were committed"
        acks.append(count)
    assert acks == sorted(acks) and len(set(acks)) == len(acks)  # increasing, never repeated
    assert len(acks) > 1
    print(f"durable acks for {messages} update messages: {acks}")
    for _ in range(20):  # the client that did not opt in got the same updates and no ack
        frame = await plain.recv(timeout=10)
        assert not control.is_control(frame)
        if set(plain.doc.get("m", type=pycrdt.Map).keys()) >= set(sent):
            break
    await peer.close()
    await plain.close()


@pytest.mark.parametrize("module", ["y-websocket-v1", "y-websocket-v2", "y-websocket"])
async def test_stock_clients_never_see_it_and_ignore_it(server, database_url, module):
    customer = await sync_peers.create_customer(database_url)
    token = sync_peers.token(TEST_SECRET, customer)
    version = json.loads((sync_peers.JS_DIR / "node_modules" / module / "package.json").read_text())["version"]
    results = {}
    for mode in ("plain", "opted-in", "handled"):
        params = {"token": token, **({"ack": "1"} if mode != "plain" else {})}
        plan = {
            "module": module,
            "server": f"{server.ws_url}/sync/{customer.slug}",
            "doc": f"doc-{mode}",
            "params": params,
            "push": 3,
            "waitMs": 1000,
            "handleWebhost": mode == "handled",
        }
        out = await asyncio.to_thread(sync_peers.js, "stock.mjs", json.dumps(plan))
        results[mode] = out
        stored = await sync_peers.stored_doc(database_url, customer, f"doc-{mode}")
        assert list(stored.get("a", type=pycrdt.Array)) == [0, 1, 2], version  # it synced either way
    never, ignored, handled = results["plain"], results["opted-in"], results["handled"]
    # an app that registers a handler for type 87 (README) reads the counts: its step 2 + 3 updates
    assert handled["errors"] == [] and handled["durable"] and handled["durable"][-1] == 4, (version, handled)
    assert str(control.WEBHOST) not in never["received"] and never["errors"] == [], (version, never)
    # opted in, a stock client gets DURABLE messages and only logs "Unable to compute message"
    assert ignored["received"].get(str(control.WEBHOST), 0) >= 1, (version, ignored)
    assert ignored["closed"] is None and ignored["synced"], (version, ignored)
    assert set(ignored["errors"]) <= {"Unable to compute message"}, (version, ignored)
