"""The lean websocket transport (sync_server.sync.transport): which first requests it takes over from
Hypercorn, and RFC 6455 on a real server, byte by byte from a raw socket (handshake, fragmented
messages with a ping between their frames, close codes, protocol errors, the hard frame limit), on
both SYNC_TRANSPORT=lean and hypercorn, with REST still served on the same port."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import httpx
import pytest

from sync_server.sync.transport import parse_upgrade

from .conftest import TEST_SECRET
from .support import sync_peers
from .support.server import ServerProcess

KEY = base64.b64encode(b"0123456789abcdef")
STEP1_EMPTY = b"\x00\x00\x01\x00"  # y-protocols sync step 1 with an empty state vector


def _head(path: bytes = b"/sync/acme/fleet", extra: bytes = b"", version: bytes = b"13") -> bytes:
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: " + version + b"\r\n" + extra + b"\r\n"
    )


def test_only_complete_plain_upgrades_under_the_prefix_are_taken_over():
    parsed = parse_upgrade(_head(b"/sync/acme/fleet?token=t", b"Sec-WebSocket-Protocol: a, b\r\n") + b"rest", b"/sync/")
    assert parsed is not None
    upgrade, rest = parsed
    assert (upgrade.path, upgrade.query, upgrade.subprotocols, rest) == (
        "/sync/acme/fleet",
        b"token=t",
        ["a", "b"],
        b"rest",
    )
    assert (b"host", b"x") in upgrade.headers
    for head in (
        _head(b"/api/v1/ping"),  # another path: Hypercorn's
        _head(version=b"8"),
        _head()[:-2],  # the head is not complete yet
        _head(b"/sync/acme/fl%65et"),  # percent-encoded: Hypercorn decodes it
        _head().replace(b"HTTP/1.1", b"HTTP/1.0"),
        _head().replace(KEY, b"short"),
        _head().replace(b"Upgrade: websocket", b"Upgrade: h2c"),
        _head().replace(b"Host: x\r\n", b""),
        _head().replace(b"Host: x", b"Bad Header: x"),
    ):
        assert parse_upgrade(head, b"/sync/") is None, head


def _frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    flag = 0x80 if masked else 0
    if n < 126:
        head += bytes([flag | n])
    elif n < 65536:
        head += bytes([flag | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([flag | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    assert not b1 & 0x80, "server frames are never masked"
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(n)


async def _open(port: int, path: str, extra: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_head(path.encode(), extra))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 "), head
    accept = base64.b64encode(hashlib.sha1(KEY + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert accept in head
    assert b"permessage-deflate" not in head.lower()  # offered below, declined on both paths
    return reader, writer


async def _until(reader: asyncio.StreamReader, want) -> list[tuple[int, bytes]]:
    seen = []
    while True:
        frame = await asyncio.wait_for(_read_frame(reader), 10)
        seen.append(frame)
        if want(frame):
            return seen


async def _close_code(reader: asyncio.StreamReader) -> tuple[int, str]:
    seen = await _until(reader, lambda f: f[0] == 8)
    payload = seen[-1][1]
    return int.from_bytes(payload[:2], "big"), payload[2:].decode()


@pytest.mark.parametrize("transport", ["lean", "hypercorn"])
async def test_rfc6455_on_a_real_server(transport, server_env, database_url, tmp_path):
    env = {**server_env, "SYNC_TRANSPORT": transport, "SYNC_MAX_MESSAGE_BYTES": str(256 * 1024)}
    proc = ServerProcess(env, log_path=tmp_path / "server.log").start()
    try:
        customer = await sync_peers.create_customer(database_url)
        path = f"/sync/{customer.slug}/fleet?token={sync_peers.token(TEST_SECRET, customer)}"
        offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"

        # a sync step 1 in three fragments with a ping between them: pong first, then the sync step 2
        reader, writer = await _open(proc.port, path, offer)
        writer.write(_frame(2, STEP1_EMPTY[:1], fin=False) + _frame(0, STEP1_EMPTY[1:3], fin=False))
        writer.write(_frame(9, b"are you there") + _frame(0, STEP1_EMPTY[3:]))
        seen = await _until(reader, lambda f: f[0] == 2 and f[1][:2] == b"\x00\x01")
        assert (10, b"are you there") in seen
        assert seen.index((10, b"are you there")) < len(seen) - 1
        # the client closes: the server answers with the same code
        writer.write(_frame(8, (1000).to_bytes(2, "big") + b"bye"))
        assert (await _close_code(reader))[0] == 1000
        assert await asyncio.wait_for(reader.read(), 10) == b""  # and then closes the socket
        writer.close()

        # a text frame: refused 4400 with its reason
        reader, writer = await _open(proc.port, path)
        writer.write(_frame(1, b"hello"))
        assert await _close_code(reader) == (4400, "binary frames only")
        writer.close()

        # a message over SYNC_MAX_MESSAGE_BYTES, in two frames: 1009 with the limit in the reason
        reader, writer = await _open(proc.port, path)
        writer.write(_frame(2, b"\x00\x02" + b"\x00" * (200 * 1024), fin=False) + _frame(0, b"\x00" * (100 * 1024)))
        code, reason = await _close_code(reader)
        assert code == 1009 and str(256 * 1024) in reason
        writer.close()

        # an unmasked client frame breaks the protocol: 1002 (Hypercorn drops the socket without one)
        reader, writer = await _open(proc.port, path)
        writer.write(_frame(2, STEP1_EMPTY, masked=False))
        try:
            code = (await _close_code(reader))[0]
        except asyncio.IncompleteReadError:
            code = None
        assert code == (1002 if transport == "lean" else None)
        writer.close()

        # a bad token on the same kind of socket: 4401 after the accept, as before
        reader, writer = await _open(proc.port, f"/sync/{customer.slug}/fleet?token=nonsense")
        assert (await _close_code(reader))[0] == 4401
        writer.close()

        # REST on the same port, whatever the transport
        async with httpx.AsyncClient(base_url=proc.base_url) as client:
            assert (await client.get("/healthz")).status_code == 200
    finally:
        proc.stop()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.parametrize("transport", ["lean", "hypercorn"])
async def test_a_ping_flood_from_a_peer_that_never_reads(transport, server_env, database_url, tmp_path):
    """40 MB of pings from a peer holding valid credentials that reads nothing: the pongs must not
    pile up in the node's write buffer. The lean transport reads on and leaves pings unanswered past
    the write buffer's high water; Hypercorn awaits the drain of each pong, so it stops reading the
    socket (TCP backpressure: our sends stall). Either way the node stays small and serves another
    customer throughout."""
    proc = ServerProcess({**server_env, "SYNC_TRANSPORT": transport}, log_path=tmp_path / "server.log").start()
    assert proc.proc is not None
    try:
        customer = await sync_peers.create_customer(database_url)
        other = await sync_peers.create_customer(database_url, "other-co")
        path = f"/sync/{customer.slug}/fleet?token={sync_peers.token(TEST_SECRET, customer)}"
        other_path = f"/sync/{other.slug}/fleet?token={sync_peers.token(TEST_SECRET, other)}"
        reader, writer = await _open(proc.port, path)
        writer.write(_frame(2, STEP1_EMPTY))
        await _until(
            reader, lambda f: f[0] == 2 and f[1][:2] == b"\x00\x01"
        )  # joined: the flood reaches the room's socket
        before = _rss_kib(proc.proc.pid)
        ping = _frame(9, b"p" * 125)
        sent = 0
        for _ in range(40):
            writer.write(ping * 8_000)  # 1 MB
            try:
                await asyncio.wait_for(writer.drain(), 5)
            except TimeoutError:
                break  # the node stopped reading this socket
            sent += 1
        # another customer's socket is served after (or during) the flood
        o_reader, o_writer = await _open(proc.port, other_path)
        o_writer.write(_frame(2, STEP1_EMPTY))
        await _until(o_reader, lambda f: f[0] == 2 and f[1][:2] == b"\x00\x01")
        grown = _rss_kib(proc.proc.pid) - before
        assert grown < 16 * 1024, f"the node grew {grown} KiB under a ping flood ({sent} MB taken)"
        if transport == "lean":
            assert sent == 40  # read on, pongs dropped
        # hypercorn: measured 10 MB taken (the kernel's buffers full of pongs), then no more reads;
        # the node grew 0.9 MiB (lean: 40 MB taken, 0.8 MiB)
        writer.transport.abort()
        o_writer.close()
    finally:
        proc.stop()


async def test_hostile_peers_of_the_lean_transport(server_env, database_url, tmp_path):
    """What a peer holding valid credentials can send the lean transport: invalid close frames and
    lengths (1002), frames declared past the limit (1009 from the header) and private close codes
    (echoed)."""
    env = {**server_env, "SYNC_TRANSPORT": "lean", "SYNC_MAX_MESSAGE_BYTES": str(64 * 1024)}
    proc = ServerProcess(env, log_path=tmp_path / "server.log").start()
    try:
        customer = await sync_peers.create_customer(database_url)
        path = f"/sync/{customer.slug}/fleet?token={sync_peers.token(TEST_SECRET, customer)}"

        # close frames a peer may not send: 1002
        for payload in (b"\x03", (1005).to_bytes(2, "big"), (999).to_bytes(2, "big"), (2999).to_bytes(2, "big")):
            reader, writer = await _open(proc.port, path)
            writer.write(_frame(8, payload))
            assert (await _close_code(reader))[0] == 1002, payload
            writer.close()
        # a 64-bit length with its top bit set (RFC 6455 5.2: must be 0): 1002 at once
        reader, writer = await _open(proc.port, path)
        writer.write(bytes((0x82, 0x80 | 127)) + (2**63 + 5).to_bytes(8, "big") + b"mask")
        assert await _close_code(reader) == (1002, "invalid frame length")
        writer.close()
        # a frame that declares more than SYNC_MAX_MESSAGE_BYTES: 1009 from its header alone (no
        # payload sent), and a message that grows past it in its second frame the same (the second
        # refusal of this peer is 4413, final for y-websocket 3.x)
        for frames in (
            bytes((0x82, 0x80 | 127)) + (2**40).to_bytes(8, "big") + b"mask",
            _frame(2, b"\x00\x02" + b"\x00" * 1000, fin=False) + bytes((0x80, 0x80 | 126, 0xFF, 0xFF)) + b"mask",
        ):
            reader, writer = await _open(proc.port, path)
            writer.write(frames)
            code, reason = await _close_code(reader)
            assert code in (1009, 4413) and str(64 * 1024) in reason, (code, reason)  # 4413: again, same peer
            writer.close()
        # a private close code is fine: echoed
        reader, writer = await _open(proc.port, path)
        writer.write(_frame(8, (4000).to_bytes(2, "big")))
        assert (await _close_code(reader))[0] == 4000
        writer.close()
    finally:
        proc.stop()


async def test_frames_before_the_accept_are_read_only_a_little():
    """While the endpoint authenticates a socket nothing counts its frames yet (the frame budget
    starts at the accept): the transport reads PRE_ACCEPT_BYTES and then leaves the rest in TCP."""
    from sync_server.sync import transport as lean

    taken: asyncio.Future = asyncio.get_running_loop().create_future()

    def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upgrade, rest = lean.parse_upgrade(_head(), b"/sync/") or (None, b"")
        assert upgrade is not None
        taken.set_result(lean.take_over(writer.transport, upgrade, rest))  # type: ignore[arg-type]

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        protocol = await asyncio.wait_for(taken, 10)
        flood = _frame(2, b"\x00" * 60_000) * 400  # 24 MB of frames, never accepted
        writer.write(flood)
        try:
            await asyncio.wait_for(writer.drain(), 3)  # TCP fills up: the node stopped reading
        except TimeoutError:
            pass
        await asyncio.sleep(0.2)
        assert len(protocol._buf) <= lean.PRE_ACCEPT_BYTES + 1024 * 1024, len(protocol._buf)
        assert writer.transport.get_write_buffer_size() > 0  # the rest waits on our side
    finally:
        writer.transport.abort()
        server.close()
