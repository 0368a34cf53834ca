"""The websocket endpoint at protocol level (a raw peer on `websockets`, real server, real PostgreSQL):
handshake order, refusals, malformed input closing only the sender, awareness bookkeeping."""

from __future__ import annotations

import asyncio
import json
import uuid

import pycrdt
import pytest

from sync_server.extensions import doc_rebuild
from sync_server.sync import protocol

from .conftest import TEST_SECRET
from .support import sync_peers
from .support.sync_peers import RawPeer


@pytest.fixture(scope="module")
def shared(pg_admin_url, migrated_template, tmp_path_factory):
    """One server (and database) for this module: these tests each use their own customer."""
    from .support import databases
    from .support.server import ServerProcess

    db_url = asyncio.run(migrated_template.clone())
    tmp = tmp_path_factory.mktemp("sync-protocol")
    proc = ServerProcess(
        {
            "DATABASE_URL": db_url,
            "DATA_DIR": str(tmp / "data"),
            "SECRET_KEY": TEST_SECRET,
            "SYNC_MAX_MESSAGE_BYTES": "65536",
        },
        log_path=tmp / "server.log",
    ).start()
    yield proc, db_url
    proc.stop()
    asyncio.run(databases.drop_database(pg_admin_url, db_url))


@pytest.fixture
def server(shared):
    return shared[0]


@pytest.fixture
def database_url(shared):
    return shared[1]


@pytest.fixture
async def customer(database_url):
    return await sync_peers.create_customer(database_url, slug=f"c{uuid.uuid4().hex[:10]}")


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


async def _other_room_still_works(server, customer):
    tok = sync_peers.token(TEST_SECRET, customer)
    b = await RawPeer.connect(url(server, customer, doc="other", token=tok))
    await b.sync()
    src = pycrdt.Doc()
    src["m"] = m = pycrdt.Map()
    m["alive"] = True
    update = src.get_update()
    await b.send(protocol.update_frame(update))
    assert await b.recv() == protocol.update_frame(update)
    await b.close()


@pytest.mark.parametrize(
    "frame, code",
    [
        (b"\xff\xfe garbage", 4400),  # garbage
        (b"\x00\x07\x01\x00", 4400),  # unknown sync sub-type
        (b"", 4400),  # empty binary frame
        ("a text frame", 4400),  # text frames are not y-websocket
        (bytes((0, 2, 50)) + b"short", 4400),  # truncated update (length says 50)
        (bytes((0, 2, 5)) + b"\xff\xff\xff\xff\xff", 4400),  # not a Yjs update
        (bytes((1, 3, 1, 1)), 4400),  # truncated awareness
        (protocol.awareness_frame([(7, 1, "[1,2]")]), 4400),  # awareness state not an object
        (protocol.awareness_frame([(7, 1, '{"x": NaN}')]), 4400),  # not JSON for JSON.parse: never relayed
        (protocol.awareness_frame([(7, 1, '{"x": [-Infinity]}')]), 4400),
        (bytes((1,)) + protocol.var_uint(9) + protocol.var_uint(1) + b"\x07\x01\x05{bad}", 4400),  # bad JSON
        (b"\x00\x02" + protocol.var_uint(70_000) + b"\x00" * 70_000, 1009),  # over SYNC_MAX_MESSAGE_BYTES
    ],
)
async def test_bad_frames_close_only_the_sender(server, customer, frame, code):
    tok = sync_peers.token(TEST_SECRET, customer)
    bystander = await RawPeer.connect(url(server, customer, token=tok))
    await bystander.sync()
    bad = await RawPeer.connect(url(server, customer, token=tok))
    await bad.recv()
    await bad.send(frame)
    got, _reason = await bad.closed()
    assert got == code
    # The bystander in the same room and another room keep working.
    src = pycrdt.Doc()
    src["m"] = m = pycrdt.Map()
    m["after"] = 1
    await bystander.send(protocol.update_frame(src.get_update()))
    assert await bystander.recv() == protocol.update_frame(src.get_update())
    await _other_room_still_works(server, customer)
    logged = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    assert any(
        e["event"] in ("sync_malformed", "sync_frame_too_big")
        and e.get("customer_id") == customer.id
        and e.get("room") == "fleet"
        for e in logged
    )  # logged with tenant and room


async def test_unknown_message_types_are_ignored(server, customer):
    tok = sync_peers.token(TEST_SECRET, customer)
    a = await RawPeer.connect(url(server, customer, token=tok))
    await a.send(bytes((9, 1, 2, 3)))
    await a.send(bytes((protocol.AUTH, 0, 0)))
    await a.sync()  # still served


async def test_malformed_awareness_is_never_relayed(server, customer):
    tok = sync_peers.token(TEST_SECRET, customer)
    watcher = await RawPeer.connect(url(server, customer, token=tok))
    await watcher.sync()
    bad = await RawPeer.connect(url(server, customer, token=tok))
    await bad.sync()
    await bad.send(protocol.awareness_frame([(5, 1, '"just a string"')]))
    assert (await bad.closed())[0] == 4400
    good = protocol.awareness_frame([(6, 1, '{"user":"ok"}')])
    peer = await RawPeer.connect(url(server, customer, token=tok))
    await peer.sync()
    await peer.send(good)
    while True:  # the first awareness frame the watcher sees is the valid one
        frame = await watcher.recv()
        if frame[0] == protocol.AWARENESS:
            assert frame == good
            break


@pytest.mark.parametrize(
    "case, code",
    [
        ("missing", 4401),
        ("garbage", 4401),
        ("expired", 4401),
        ("other_doc", 4403),
        ("other_customer", 4403),
        ("suspended", 4403),
        ("bad_path", 4400),
    ],
)
async def test_refusals(server, customer, database_url, case, code):
    doc = "fleet"
    tok = sync_peers.token(TEST_SECRET, customer)
    if case == "missing":
        tok = None
    elif case == "garbage":
        tok = "wst1.x.y"
    elif case == "expired":
        import time

        from sync_server.domain.accounts import sync_tokens

        tok = sync_tokens.mint(
            TEST_SECRET,
            customer_id=customer.id,
            customer_slug=customer.slug,
            docs=["*"],
            ttl_seconds=1,
            now=time.time() - 10,
        )[0]
    elif case == "other_doc":
        tok = sync_peers.token(TEST_SECRET, customer, docs=["tracks/*"])
    elif case == "other_customer":
        other = await sync_peers.create_customer(database_url, slug=f"o{uuid.uuid4().hex[:10]}")
        tok = sync_peers.token(TEST_SECRET, other)
    elif case == "suspended":
        await sync_peers.set_status(database_url, customer, "suspended")
    elif case == "bad_path":
        doc = "../etc"
    target = f"{server.ws_url}/sync/{customer.slug}/{doc}" + (f"?token={tok}" if tok else "")
    peer = await RawPeer.connect(target)
    got, reason = await peer.closed()
    assert got == code and reason
    assert not peer.frames  # refused before any document data


async def test_token_in_subprotocol_and_api_key_header(server, customer, database_url):
    tok = sync_peers.token(TEST_SECRET, customer)
    a = await RawPeer.connect(url(server, customer), subprotocols=[tok])
    assert a.ws.subprotocol == tok
    await a.sync()
    await a.close()
    raw = await sync_peers.create_api_key(database_url, customer, ["sync:read"])
    b = await RawPeer.connect(url(server, customer), additional_headers={"Authorization": f"Bearer {raw}"})
    await b.sync()
    src = pycrdt.Doc()
    src["m"] = m = pycrdt.Map()
    m["x"] = 1
    await b.send(protocol.update_frame(src.get_update()))  # read-only key: dropped, told once
    frame = await b.recv()
    assert frame[0] == protocol.AUTH
    await b.close()


async def test_query_awareness_and_presence_removed_when_peer_drops(server, customer):
    tok = sync_peers.token(TEST_SECRET, customer)
    a = await RawPeer.connect(url(server, customer, token=tok))
    await a.sync()
    await a.send(protocol.awareness_frame([(42, 3, '{"user":"a"}')]))
    await a.recv()  # own echo
    b = await RawPeer.connect(url(server, customer, token=tok))
    await b.recv()  # step 1
    joined = await b.recv()  # presence of everybody, at once
    assert protocol.decode(joined).entries == ((42, 3, '{"user":"a"}'),)
    await b.send(bytes((protocol.QUERY_AWARENESS,)))
    assert protocol.decode(await b.recv()).entries == ((42, 3, '{"user":"a"}'),)
    a.ws.transport.abort()  # no close handshake
    while True:
        msg = protocol.decode(await b.recv())
        if isinstance(msg, protocol.AwarenessUpdate):
            assert msg.entries == ((42, 4, None),)
            break


def _rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_a_peer_that_never_reads_is_closed_1013_by_the_byte_bound(database_url, customer, tmp_path):
    """400 relayed updates of 200 KB to a peer that never reads stay far under the frame bound
    (16384 frames) but are 80 MB: the byte bound (2 MiB here) closes that peer with 1013, and the
    server's memory does not grow by what it would have queued for it."""
    import os

    import httpx
    import websockets

    from .support.server import ServerProcess

    node = ServerProcess(
        {
            "DATABASE_URL": database_url,
            "DATA_DIR": str(tmp_path / "data"),
            "SECRET_KEY": TEST_SECRET,
            "SYNC_MAX_MESSAGE_BYTES": str(1024 * 1024),
            "SYNC_SEND_QUEUE_BYTES": str(2 * 1024 * 1024),
            "TRACKING_READERS": "0",
            # no compaction mid-test (it reads the log: memory that is not the queue's)
            "COMPACT_AFTER_BYTES": str(2**40),
            "COMPACT_AFTER_UPDATES": "10000000",
        },
        log_path=tmp_path / "node.log",
    ).start()
    key = await sync_peers.create_api_key(database_url, customer, ["sync:write"])
    try:
        # Reads nothing once its client buffer (one frame) is full: the kernel buffers fill, then the
        # server's writes to it block and its send queue grows.
        stalled = await websockets.connect(
            url(node, customer, token=sync_peers.token(TEST_SECRET, customer)), max_size=None, max_queue=1
        )
        src = pycrdt.Doc()
        src["m"] = blob = pycrdt.Map()
        updates = []
        for _ in range(400):
            before = src.get_state()
            blob["blob"] = os.urandom(200_000)  # overwrites one key: the room's document stays small
            updates.append(src.get_update(before))
        async with httpx.AsyncClient(
            base_url=node.base_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
        ) as http:

            async def post(update: bytes) -> None:
                # answered once durable: the writer never outruns the update log, only the reader lags
                r = await http.post("/api/v1/docs/fleet/updates", content=update)
                assert r.status_code == 200, r.text

            for update in updates[:5]:
                await post(update)
            baseline = peak = _rss_bytes(node.proc.pid)
            for update in updates[5:]:
                await post(update)
                peak = max(peak, _rss_bytes(node.proc.pid))
        grown = peak - baseline
        print(f"server RSS grew {grown / 2**20:.1f} MiB while 80 MB were relayed past a stalled peer")
        # Now read what reached the stalled peer: some updates, then the close.
        frames = 0
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(stalled.recv(), 10)
                frames += 1
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013, (frames, closed.value)
        assert frames < len(updates)
        assert grown < 30 * 2**20, f"server RSS grew {grown / 2**20:.1f} MiB"
        logged = [json.loads(line) for line in node.log_text().splitlines() if line.startswith("{")]
        assert any(e["event"] == "send_queue_full" and e.get("customer_id") == customer.id for e in logged)
    finally:
        node.stop()


async def test_a_peer_waiting_for_a_cold_load_applies_the_doc_while_it_loads(server, customer, database_url):
    """A long log replayed for a peer that waits for it: the doc goes out as updates while it is
    replayed, and the answer to the peer's sync step 1 (sent before any of them, as y-websocket
    does) leaves out what they carried. The peer's own offline edit still reaches the room."""
    updates = sync_peers.array_pushes(3 * doc_rebuild.PROGRESS_ROWS)
    await sync_peers.log_rows(database_url, customer.id, "cold", updates)
    tok = sync_peers.token(TEST_SECRET, customer)
    a, a2 = [await RawPeer.connect(url(server, customer, doc="cold", token=tok)) for _ in range(2)]
    a.doc.get("m", type=pycrdt.Map)["offline"] = 1
    await asyncio.gather(a.sync(), a2.sync())  # both wait for the same load
    for peer in (a, a2):
        kinds = [type(protocol.decode(f)) for f in peer.frames]
        previews = kinds.index(protocol.SyncStep1)
        assert peer.doc.get("log", type=pycrdt.Array).to_py() == [{"i": float(i)} for i in range(len(updates))]
        if peer is a2 and not previews:
            continue  # a2 came after the first update went out (a slow machine): the ordinary full step 2
        assert previews >= 3 and set(kinds[:previews]) == {protocol.SyncUpdate}  # the doc, as it was replayed
        # the answer left out what the updates carried (it holds the rows replayed after the last one)
        assert len(peer.frames[-1]) < len(protocol.step2_frame(peer.doc.get_update())) / 2
    await a.close()
    await a2.close()
    # a peer joining the loaded room gets all of it (the first peer's edit included) in its step 2
    b = await RawPeer.connect(url(server, customer, doc="cold", token=tok))
    for _ in range(50):
        await b.sync()
        if b.doc.get("m", type=pycrdt.Map).to_py() == {"offline": 1.0}:
            break
        await asyncio.sleep(0.1)
    assert [type(protocol.decode(f)) for f in b.frames][:1] == [protocol.SyncStep1]
    assert b.doc.get("m", type=pycrdt.Map).to_py() == {"offline": 1.0}
    assert len(b.doc.get("log", type=pycrdt.Array)) == len(updates)
    await b.close()


@pytest.mark.parametrize(
    "query",
    [
        "token=wst1.abc_-.sig&ack=1",
        "",
        "ack",
        "token=",
        "=x",
        "token=&token=b",
        "a==b&&c=1",
        "a=1&a=2&b",
        "token=a%2Eb&ack=yes",
        "token=a+b",
        "ack=1;token=x",
        "token=%zz",
    ],
)
def test_the_sync_query_is_read_as_parse_qs_reads_it(query):
    from urllib.parse import parse_qs

    from sync_server.sync.endpoint import _parse_query

    assert _parse_query(query) == parse_qs(query)


def test_sync_paths_answer_the_same_when_remembered():
    from sync_server.sync.endpoint import parse_path

    long_doc = "d" * 300
    for _ in range(2):
        assert parse_path("/sync/acme/tracks/v1") == ("acme", "tracks/v1")
        assert parse_path("/sync/acme/a/../b") is None and parse_path("/sync/Acme/x") is None
        assert parse_path(f"/sync/acme/{long_doc}") is None and parse_path("/sync/acme") is None


def test_an_authenticate_hook_sees_the_headers_by_lower_case_name():
    from sync_server.sync.hooks import ConnectRequest

    request = ConnectRequest(
        "c1", "acme", "fleet", True, "token", [(b"X-Device", b"phone-7"), (b"user-agent", b"\xe9")]
    )
    assert request.headers == {"x-device": "phone-7", "user-agent": "é"} and request.headers is request.headers
    assert ConnectRequest("c1", "acme", "fleet", True, "token").headers == {}
