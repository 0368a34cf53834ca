"""Hostile input at the sync endpoint, case by case (real server, real PostgreSQL, raw peers and a
stock JS y-websocket client): native panics, allocation bombs, NaN presence, no-op and gapped updates.
The random search for more of these is tests/test_fuzz.py."""

from __future__ import annotations

import asyncio
import resource
import time
import uuid

import httpx
import pycrdt
import pytest

from sync_server.sync import protocol, yjs_update
from sync_server.sync.hooks import HookList
from sync_server.sync.rooms import Room

from .conftest import TEST_SECRET
from .support import fuzz, sync_peers
from .support.sync_peers import RawPeer
from .test_sync_js import plan, run_js

SV_BOMB = bytes.fromhex("00000780808080020101")  # sync step 1 declaring 2^29 state-vector entries
PANIC_CASE = fuzz.CORPUS_DIR / "yrs-panic-update-rs-85.hex"  # yrs BlockSet::exclude unwrap on None


def url(server, customer, doc="fleet", mode="rw"):
    return f"{server.ws_url}/sync/{customer.slug}/{doc}?token={sync_peers.token(TEST_SECRET, customer, mode=mode)}"


@pytest.fixture
async def customer(database_url):
    return await sync_peers.create_customer(database_url, slug=f"c{uuid.uuid4().hex[:10]}")


async def updates_received(peer: RawPeer, seconds: float) -> list[bytes]:
    """Every sync update frame the peer receives within `seconds`."""
    got = []
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            frame = await peer.recv(timeout=left)
        except TimeoutError:
            break
        msg = protocol.decode(frame)
        if isinstance(msg, protocol.SyncUpdate) and not msg.step2:
            got.append(msg.update)
    return got


async def test_state_vector_bomb_is_refused_before_the_engine_allocates():
    """The 10-byte frame that made yrs allocate ~1 GB (1.1 s) is refused by the frame check, with
    no allocation beyond the frame (maxrss unchanged) and before the doc is touched."""
    room = Room("c", "d", HookList())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    for _ in range(100):
        with pytest.raises(protocol.Malformed, match="more entries than it holds"):
            await room.receive(None, SV_BOMB)
    per_frame_ms = (time.perf_counter() - started) * 10
    grew_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(f"\nstate-vector bomb: {per_frame_ms:.4f} ms a frame, maxrss +{grew_kib} KiB")
    assert grew_kib < 16 * 1024
    # The same goes for an update declaring 2^28 client sections (0.44 s, 0.5 GB in yrs).
    with pytest.raises(protocol.Malformed, match="more client sections"):
        await room.apply(protocol.var_uint(2**28) + b"\x01\x01\x00")


async def test_bomb_over_the_websocket_closes_only_the_sender(server, customer):
    other = await RawPeer.connect(url(server, customer))
    await other.sync()
    attacker = await RawPeer.connect(url(server, customer))
    await attacker.send(SV_BOMB)
    assert (await attacker.closed())[0] == 4400
    other.doc.get("m", type=pycrdt.Map)["still"] = "here"
    await other.send(protocol.update_frame(other.doc.get_update()))
    assert await updates_received(other, 2.0)  # echoed: the room lives on


async def test_update_that_panics_yrs_is_refused_and_the_room_is_rebuilt(server, customer, database_url):
    """The sender is closed 4400 'update rejected'; the update is neither stored nor relayed; the
    room is rebuilt from PostgreSQL and the other peer keeps editing on the same socket."""
    valid, bad = fuzz.load_case(PANIC_CASE)
    honest = await RawPeer.connect(url(server, customer))
    await honest.sync()
    await honest.send(valid)
    assert await updates_received(honest, 1.0)
    attacker = await RawPeer.connect(url(server, customer))
    await attacker.sync()
    await attacker.send(bad)
    code, reason = await attacker.closed()
    assert (code, reason) == (4400, "update rejected")

    # The honest peer is still connected (moved to the rebuilt room) and its next edit is echoed.
    honest.doc.get("after", type=pycrdt.Map)["ok"] = True
    await honest.send(protocol.update_frame(honest.doc.get_update()))
    echoed = await updates_received(honest, 3.0)
    assert echoed, "the honest peer got nothing back after the rebuild"
    late = await RawPeer.connect(url(server, customer))
    await late.sync()
    assert late.doc.get("after", type=pycrdt.Map).to_py() == {"ok": True}
    assert yjs_update.state(late.doc.get_state()) == yjs_update.state(honest.doc.get_state())

    # Only what the room accepted is stored, and it reloads.
    await asyncio.sleep(0.2)
    _, _, rows = await sync_peers.stored_updates(database_url, customer, "fleet")
    assert protocol.decode(bad).update not in rows
    stored = await sync_peers.stored_doc(database_url, customer, "fleet")
    assert stored.get("after", type=pycrdt.Map).to_py() == {"ok": True}


async def test_nan_presence_is_refused_and_a_stock_js_client_joining_stays_connected(server, customer):
    for state in (b'{"user":{"name":"x"},"cursor":NaN}', b'{"v":Infinity}', b'{"d":' + b"[" * 40 + b"]" * 40 + b"}"):
        evil = await RawPeer.connect(url(server, customer, mode="r"))
        entry = protocol.var_uint(77) + protocol.var_uint(1) + protocol.var_uint(len(state)) + state
        payload = protocol.var_uint(1) + entry
        await evil.send(bytes((protocol.AWARENESS,)) + protocol.var_uint(len(payload)) + payload)
        assert (await evil.closed())[0] == 4400, state
    out = await run_js(
        "peer.mjs",
        plan(server, customer, steps=[{"op": "synced"}, {"op": "sleep", "ms": 1500}, {"op": "print", "mark": "after"}]),
    )
    assert out["connects"] == 1 and out["closed"] is None
    assert not [e for e in out["events"] if "close" in e], out["events"]


async def test_updates_that_change_nothing_are_neither_stored_nor_relayed(server, customer, database_url):
    writer = await RawPeer.connect(url(server, customer))
    await writer.sync()
    watcher = await RawPeer.connect(url(server, customer))
    await watcher.sync()
    text = writer.doc.get("t", type=pycrdt.Text)
    text += "hello"
    update = writer.doc.get_update()
    before = writer.doc.get_state()
    del text[0:2]
    deletion = writer.doc.get_update(before)
    for frame in (update, update, deletion, deletion, b"\x00\x00" + b"junk" * 1000):
        await writer.send(protocol.update_frame(frame))
    assert await updates_received(watcher, 1.5) == [update, deletion]
    await asyncio.sleep(0.1)
    count, _, rows = await sync_peers.stored_updates(database_url, customer, "fleet")
    assert count == 2 and all(len(r) < 100 for r in rows)


async def test_update_with_a_gap_waits_for_what_it_builds_on(server, customer, database_url):
    """A struct past what the room has of its client (yrs would integrate it with a Skip and panic
    later) is held until the missing structs arrive, then applied; over HTTP it is a 422."""
    source = pycrdt.Doc()
    items = source.get("m", type=pycrdt.Map)
    items["a"] = 1
    first = source.get_update()
    sv = source.get_state()
    items["b"] = 2
    second = source.get_update(sv)
    writer = await RawPeer.connect(url(server, customer))
    await writer.sync()
    watcher = await RawPeer.connect(url(server, customer))
    await watcher.sync()
    await writer.send(protocol.update_frame(second))
    assert await updates_received(watcher, 1.0) == []
    await writer.send(protocol.update_frame(first))
    await updates_received(watcher, 1.5)
    assert watcher.doc.get("m", type=pycrdt.Map).to_py() == {"a": 1, "b": 2}
    await asyncio.sleep(0.1)
    stored = await sync_peers.stored_doc(database_url, customer, "fleet")
    assert stored.get("m", type=pycrdt.Map).to_py() == {"a": 1, "b": 2}

    key = await sync_peers.create_api_key(database_url, customer, ["sync:write", "sync:read"])
    sv = source.get_state()
    items["c"] = 3
    third = source.get_update(sv)
    sv = source.get_state()
    items["d"] = 4
    fourth = source.get_update(sv)
    async with httpx.AsyncClient(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        r = await http.post(
            "/api/v1/docs/fleet/updates", content=fourth, headers={"Content-Type": "application/octet-stream"}
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
        r = await http.post(
            "/api/v1/docs/fleet/updates", content=third, headers={"Content-Type": "application/octet-stream"}
        )
        assert r.status_code == 200
