"""Issue 15, the transport's edges, driven by clients nobody here wrote: pycrdt's Provider (echoes
every update it applies), y-websocket 1.5.4 / 2.1.0 / 3.1.0 (refusal storms, a long-offline day
sent as one frame), silent listeners that only answer pings."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time

import httpx
import pycrdt
import pytest
import websockets

from sync_server.sync import protocol

from .conftest import TEST_SECRET
from .support import fleet, sync_peers
from .support.server import ServerProcess

UTC = dt.UTC


class Channel:
    """pycrdt's Channel over a `websockets` client connection, counting the update frames it reads."""

    def __init__(self, ws, path: str) -> None:
        self.ws = ws
        self._path = path
        self.updates = 0

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except websockets.ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        await self.ws.send(message)

    async def recv(self) -> bytes:
        frame = await self.ws.recv()
        if frame[:2] == bytes((protocol.SYNC, protocol.UPDATE)):
            self.updates += 1
        return bytes(frame)


async def _until(check, what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _rows(database_url, customer, doc) -> int:
    return (await sync_peers.stored_updates(database_url, customer, doc))[0]


# -- no-op updates (pycrdt Provider echoes) -----------------------------------------------------


@pytest.mark.parametrize("edit", ["insert", "delete"])
async def test_three_pycrdt_providers_one_edit_one_row_one_frame_each(server, database_url, edit):
    """Each Provider re-sends every update it applies (the server's relay included): the echoes add
    nothing to the room's state and are neither stored nor relayed."""
    customer = await sync_peers.create_customer(database_url, f"echo-{edit}")
    tok = sync_peers.token(TEST_SECRET, customer)
    url = f"{server.ws_url}/sync/{customer.slug}/notes?token={tok}"
    docs = [pycrdt.Doc() for _ in range(3)]
    texts = [d.get("t", type=pycrdt.Text) for d in docs]
    async with (
        websockets.connect(url, max_size=None) as w0,
        websockets.connect(url, max_size=None) as w1,
        websockets.connect(url, max_size=None) as w2,
    ):
        channels = [Channel(w, "notes") for w in (w0, w1, w2)]
        async with (
            pycrdt.Provider(docs[0], channels[0]) as p0,
            pycrdt.Provider(docs[1], channels[1]) as p1,
            pycrdt.Provider(docs[2], channels[2]) as p2,
        ):
            for p in (p0, p1, p2):
                await asyncio.wait_for(p.synced.wait(), 10)
            if edit == "delete":  # a text everybody has, then the edit under test deletes part of it
                texts[0] += "hello world"
                await _until(lambda: all(str(t) == "hello world" for t in texts), "the text everywhere")
                await asyncio.sleep(0.5)  # the echoes of the setup edit, if any, come and go
            rows_before = await _rows(database_url, customer, "notes")
            for ch in channels:
                ch.updates = 0
            if edit == "insert":
                texts[0] += "hello"
                expected = "hello"
            else:
                del texts[0][0:6]
                expected = "world"
            await _until(lambda: all(str(t) == expected for t in texts), "the edit everywhere")
            await asyncio.sleep(1.0)  # every echo has had time to arrive and be relayed
            frames = [ch.updates for ch in channels]
    await _until_stored(database_url, customer, "notes", rows_before + 1)
    await asyncio.sleep(0.3)  # a group commit later: nothing more arrives
    assert await _rows(database_url, customer, "notes") == rows_before + 1
    assert frames == [1, 1, 1]  # the sender's own update comes back once (as y-websocket does), no echo


async def _until_stored(database_url, customer, doc, rows: int) -> None:
    for _ in range(250):
        if await _rows(database_url, customer, doc) >= rows:
            return
        await asyncio.sleep(0.02)


# -- silent clients that answer pings -----------------------------------------------------------


@pytest.fixture
def idle_server(server_env, tmp_path):
    """SYNC_IDLE_TIMEOUT_SECONDS 5 (its minimum): "ten minutes" of idle are 20 s here, 4 timeouts."""
    proc = ServerProcess({**server_env, "SYNC_IDLE_TIMEOUT_SECONDS": "5"}, log_path=tmp_path / "server.log").start()
    yield proc
    proc.stop()


async def test_silent_pycrdt_listener_stays_connected_and_gets_the_next_edit(idle_server, database_url):
    customer = await sync_peers.create_customer(database_url, "silent")
    tok = sync_peers.token(TEST_SECRET, customer)
    url = f"{idle_server.ws_url}/sync/{customer.slug}/fleet?token={tok}"
    listener_doc = pycrdt.Doc()
    live = listener_doc.get("live", type=pycrdt.Map)
    # ping_interval=None: the listener never pings on its own; websockets answers the server's pings
    async with websockets.connect(url, max_size=None, ping_interval=None) as ws:
        channel = Channel(ws, "fleet")
        async with pycrdt.Provider(listener_doc, channel) as provider:
            await asyncio.wait_for(provider.synced.wait(), 10)
            # a dead peer beside it (an upgraded socket that never reads or answers) is still closed
            dead = await asyncio.to_thread(_dead_peer, idle_server.port, f"/sync/{customer.slug}/fleet?token={tok}")
            try:
                await asyncio.sleep(20)  # four idle timeouts without sending a single data frame
                assert ws.close_code is None, (ws.close_code, ws.close_reason)
                writer = await sync_peers.RawPeer.connect(url)
                await writer.sync()
                edit = pycrdt.Doc()
                edit.get("live", type=pycrdt.Map)["van-7"] = "at the depot"
                await writer.send(protocol.update_frame(edit.get_update(listener_doc.get_state())))
                await _until(lambda: live.get("van-7") == "at the depot", "the edit at the silent listener")
                await writer.close()
                dead.settimeout(1)
                assert _closed_by_server(dead), "a peer that answers nothing must still be closed"
            finally:
                dead.close()
    log = idle_server.log_text()
    closed = [json.loads(line) for line in log.splitlines() if '"sync_disconnected"' in line]
    assert [c.get("code") for c in closed].count(1001) == 1  # only the dead peer went idle


def _silent_for(port: int, timeout: float) -> float | None:
    """Open a TCP connection, send nothing: seconds until the server ends it, None if it does not."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(timeout)
        started = time.monotonic()
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return None
        except ConnectionResetError:
            data = b""
        assert data == b"", data  # nothing asked, nothing answered
        return time.monotonic() - started


async def test_a_socket_that_never_sends_a_request_is_closed_like_hypercorn_closes_it(server):
    """The lean transport's look at a connection's first bytes waits no longer than Hypercorn's own
    idle timer (keep_alive_timeout, 5 s): a silent socket is not held for ever (one fd and one task
    each), and the node goes on serving the while."""
    silent = [asyncio.to_thread(_silent_for, server.port, 20.0) for _ in range(3)]
    waits = await asyncio.gather(*silent)
    assert all(w is not None for w in waits), waits
    assert all(4.0 <= w <= 12.0 for w in waits), waits  # Hypercorn's 5 s, not at once and not never
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200


def _dead_peer(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server sent a close frame or ended the connection (reads every frame there is)."""
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
            data += chunk
            pos = 0
            while len(data) - pos >= 2:  # server frames are unmasked
                opcode, n, head = data[pos] & 0x0F, data[pos + 1] & 0x7F, 2
                if n == 126:
                    n, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
                elif n == 127:
                    n, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
                if len(data) - pos < head + n:
                    break
                if opcode == 8:
                    return True
                pos += head + n
    except TimeoutError:
        return False


# -- refusal storms -------------------------------------------------------------------------------

LIBS = {"1.5.4": "y-websocket-v1", "2.1.0": "y-websocket-v2", "3.1.0": "y-websocket"}


def edge(plan: dict, timeout: float = 180.0) -> dict:
    return sync_peers.js("edge.mjs", json.dumps(plan), timeout=timeout)


@pytest.mark.slow
async def test_bad_token_costs_one_attempt_per_hold_whatever_the_client_version(server_env, tmp_path, database_url):
    """y-websocket 1.x/2.x reset their backoff when a socket opens (a refusal right after the accept
    had them back every ~100 ms); a refused socket is held SYNC_REFUSAL_HOLD_SECONDS first."""
    hold = 3.0
    server = ServerProcess(
        {**server_env, "SYNC_REFUSAL_HOLD_SECONDS": str(hold)}, log_path=tmp_path / "server.log"
    ).start()
    try:
        customer = await sync_peers.create_customer(database_url, "storm")
        seconds = 30
        plans = [
            {"lib": lib, "server": f"{server.ws_url}/sync/{customer.slug}", "doc": "fleet", "token": "wst1.bad.token"}
            | {"seconds": seconds, "until": "time"}
            for lib in LIBS.values()
        ]
        results = await asyncio.gather(*(asyncio.to_thread(edge, plan) for plan in plans))
        log = server.log_text()
    finally:
        server.stop()
    by_version = dict(zip(LIBS, results, strict=True))
    for version, out in by_version.items():
        assert out["closes"] and all(c["code"] == 4401 for c in out["closes"]), (version, out["closes"][:3])
    # 3.x stops at the first 4401; 1.x and 2.x retry, once per hold (+ their short backoff), not per 100 ms
    assert by_version["3.1.0"]["attempts"] == 1 and by_version["3.1.0"]["stopped"]
    for version in ("1.5.4", "2.1.0"):
        attempts = by_version[version]["attempts"]
        assert seconds / (hold + 2.5) <= attempts <= seconds / hold + 1, (version, attempts)
    refused_lines = [json.loads(line) for line in log.splitlines() if '"sync_refused"' in line]
    total = sum(out["attempts"] for out in results)
    assert len(refused_lines) <= seconds / 10 + 2  # one line per customer and code per 10 s
    assert len(refused_lines) + sum(line["suppressed"] for line in refused_lines) <= total
    print(json.dumps({v: out["attempts"] for v, out in by_version.items()}), len(refused_lines), len(log))


# -- large frames ---------------------------------------------------------------------------------


async def test_a_frame_over_the_limit_is_refused_with_a_reason_counted_and_3x_stops(server_env, tmp_path, db):
    """1009 with the limit in its reason, then 4413 for the same client and doc (y-websocket 3.x
    stops instead of re-uploading forever); logged with tenant, doc and size; counted in /usage."""
    import httpx

    limit = 1024 * 1024
    server = ServerProcess(
        {**server_env, "SYNC_MAX_MESSAGE_BYTES": str(limit)}, log_path=tmp_path / "server.log"
    ).start()
    try:
        cid = await fleet.customer(db, "bigframes", plan="starter")
        customer = sync_peers.Customer(str(cid), "bigframes")
        plan = {
            "lib": "y-websocket",
            "server": f"{server.ws_url}/sync/{customer.slug}",
            "doc": "bulk",
            "token": sync_peers.token(TEST_SECRET, customer),
            "points": 20_000,  # ~1.6 MB as one update
            "seconds": 60,
            "until": "closed",
        }
        out = await asyncio.to_thread(edge, plan)
        key = await sync_peers.create_api_key(server_env["DATABASE_URL"], customer, ["billing:read"])
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            usage = (await http.get("/api/v1/usage", headers={"Authorization": f"Bearer {key}"})).json()
        log = server.log_text()
    finally:
        server.stop()
    assert out["update_bytes"] > limit
    assert [c["code"] for c in out["closes"]] == [1009, 4413], out["closes"]
    assert out["closes"][0]["reason"] == f"message too big (limit {limit} bytes)"
    assert out["stopped"] and out["attempts"] == 2
    lines = [json.loads(line) for line in log.splitlines() if '"sync_frame_too_big"' in line]
    assert [(x["customer_id"], x["room"], x["repeated"]) for x in lines] == [
        (customer.id, "bulk", False),
        (customer.id, "bulk", True),
    ]
    assert all(x["bytes_at_least"] > limit and x["limit"] == limit for x in lines)
    assert usage["sync_frames_too_big_today"] == 2
    assert await _rows(server_env["DATABASE_URL"], customer, "bulk") == 0


DAY = dt.datetime.now(UTC).date() - dt.timedelta(days=1)
DAY_START_MS = int(dt.datetime(DAY.year, DAY.month, DAY.day, 1, tzinfo=UTC).timestamp() * 1000)
DAY_FIXES = 300_000  # several fixes a second for most of a day: 4 a second from 01:00 to 21:50 UTC


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def _offline_days(server, db, tmp_path, phones: int) -> tuple[list[dict], dict]:
    plan_id = await fleet.plan(db, f"day-{phones}", points_per_day=10 * DAY_FIXES)
    cid = await fleet.customer(db, f"offline-{phones}", plan=plan_id)
    customer = sync_peers.Customer(str(cid), f"offline-{phones}")
    vehicles = [await fleet.vehicle(db, cid, f"van-{i}") for i in range(phones)]
    token = sync_peers.token(TEST_SECRET, customer, docs=["tracks/*"])
    plans = [
        {"lib": "y-websocket", "server": f"{server.ws_url}/sync/{customer.slug}", "doc": f"tracks/{vid}/{DAY}"}
        | {"token": token, "points": DAY_FIXES, "startMs": DAY_START_MS, "intervalMs": 250}
        | {"seconds": 600, "until": "synced"}
        for vid in vehicles
    ]
    peak = {"server_kib": 0}
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            peak["server_kib"] = max(peak["server_kib"], _rss_kib(server.proc.pid))
            await asyncio.sleep(0.1)

    sampler = asyncio.ensure_future(sample())
    try:
        results = await asyncio.gather(*(asyncio.to_thread(edge, plan, 660) for plan in plans))

        async def stored() -> bool:
            rows = await fleet.count(db, cid, "SELECT count(*) FROM gps_positions")
            return rows >= phones * DAY_FIXES

        deadline = asyncio.get_running_loop().time() + 600
        while not await stored():
            assert asyncio.get_running_loop().time() < deadline, "rows never all arrived"
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # nothing more arrives after the last batch
    finally:
        done.set()
        await sampler
    peak["server_hwm_kib"] = _rss_kib(server.proc.pid, "VmHWM")
    rows = await fleet.count(db, cid, "SELECT count(*) FROM gps_positions")
    distinct = await fleet.count(db, cid, "SELECT count(DISTINCT (vehicle_id, time)) FROM gps_positions")
    return results, {"rows": rows, "distinct": distinct, **peak}


@pytest.mark.slow
async def test_a_phone_offline_for_a_300k_fix_day_syncs_every_fix_exactly_once(server_env, tmp_path, db):
    """All seven documented fields, the whole day as one sync step 2 frame (~24 MB): under the
    default SYNC_MAX_MESSAGE_BYTES (64 MiB), so it syncs; every fix becomes exactly one row."""
    server = ServerProcess(server_env, log_path=tmp_path / "server.log").start()
    try:
        results, seen = await _offline_days(server, db, tmp_path, phones=1)
    finally:
        server.stop()
    (out,) = results
    assert out["synced"] and all(c["code"] == 1000 for c in out["closes"]), out["closes"]
    assert out["attempts"] == 1 and out["points"] == DAY_FIXES and out["update_bytes"] > 16 * 1024 * 1024
    assert seen["rows"] == seen["distinct"] == DAY_FIXES
    print(json.dumps({"phones": 1, "update_bytes": out["update_bytes"], "synced_ms": out["synced_ms"], **seen}))


@pytest.mark.slow
async def test_two_such_phones_at_once_on_a_small_frame_budget_both_finish(server_env, tmp_path, db):
    """SYNC_FRAME_BUDGET_BYTES 4 MiB, far under one phone's frame: the second upload is not read
    while the first is received (TCP backpressure, not a refusal), then it goes; both sync."""
    server = ServerProcess(
        {**server_env, "SYNC_FRAME_BUDGET_BYTES": str(4 * 1024 * 1024)}, log_path=tmp_path / "server.log"
    ).start()
    try:
        results, seen = await _offline_days(server, db, tmp_path, phones=2)
        log = server.log_text()
    finally:
        server.stop()
    for out in results:
        assert out["attempts"] == 1 and out["synced"], out
        assert all(c["code"] == 1000 for c in out["closes"]), out["closes"]
    assert seen["rows"] == seen["distinct"] == 2 * DAY_FIXES
    assert '"sync_frame_too_big"' not in log
    print(json.dumps({"phones": 2, "update_bytes": [o["update_bytes"] for o in results], **seen}))
