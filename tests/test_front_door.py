"""sync_server.node.front_door: a connection's first bytes are read by one small Protocol; a /sync/
upgrade goes to the lean transport with no Hypercorn or asyncio stream objects made for it, anything
else reaches Hypercorn exactly as asyncio.start_server hands it over, however the bytes arrive."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from sync_server.node import front_door
from sync_server.sync import protocol

from .conftest import TEST_SECRET
from .support import sync_peers

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def _exchange(
    port: int, pieces: list[bytes], until: bytes, *, pause: float = 0.05, timeout: float = 10.0, more: int = 0
) -> bytes:
    """Send `pieces` as separate TCP segments (a pause between them), then read until `until` and
    `more` bytes after it are seen (or the server ends the connection)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(pause)
        data = b""
        while until not in data or len(data) < data.index(until) + len(until) + more:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _upgrade(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def test_rest_sent_a_byte_at_a_time_and_pipelined_reaches_hypercorn_whole(server):
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    one_by_one = await asyncio.to_thread(
        _exchange, server.port, [request[i : i + 1] for i in range(len(request))], b"\r\n\r\n", pause=0.005
    )
    assert one_by_one.startswith(b"HTTP/1.1 200"), one_by_one[:200]
    # two requests in the first segment: both answered, in order, on the one connection
    both = await asyncio.to_thread(_exchange, server.port, [request + request], b'"ok"', pause=0.5)
    assert both.count(b"HTTP/1.1 200") == 2, both


async def test_a_sync_upgrade_whole_or_split_is_answered_with_101_and_sync_step_1(server, database_url):
    customer = await sync_peers.create_customer(database_url, "frontdoor")
    path = f"/sync/{customer.slug}/fleet?token={sync_peers.token(TEST_SECRET, customer)}"
    head = _upgrade(path)
    step1 = b"\x82"  # a binary frame follows the 101
    for pieces in ([head], [head[:20], head[20:]]):  # whole: lean transport; split: Hypercorn's path
        data = await asyncio.to_thread(_exchange, server.port, pieces, b"\r\n\r\n" + step1, more=3)
        assert data.startswith(b"HTTP/1.1 101"), data[:200]
        frame = data.partition(b"\r\n\r\n")[2]
        assert frame[:1] == step1 and frame[2:4] == bytes((protocol.SYNC, protocol.STEP1)), frame[:8]


class _Endpoint:
    """Takes over what starts with b'SYNC' (as SyncEndpoint.take_over does /sync/ upgrades)."""

    def __init__(self) -> None:
        self.taken: list[bytes] = []

    def take_over(self, transport, head: bytes) -> bool:
        if not head.startswith(b"SYNC"):
            return False
        self.taken.append(head)
        transport.write(b"taken:" + head)
        transport.close()
        return True


@pytest.fixture
def served():
    saved = (front_door.SERVED.endpoint, front_door.SERVED.silent_timeout)
    front_door.SERVED.endpoint, front_door.SERVED.silent_timeout = _Endpoint(), 0.5
    yield front_door.SERVED
    front_door.SERVED.endpoint, front_door.SERVED.silent_timeout = saved


async def test_start_server_builds_streams_only_for_what_the_endpoint_does_not_take(served):
    handed: list[bytes] = []

    async def hypercorn_callback(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handed.append(await reader.readexactly(10))
        writer.write(b"streamed")
        await writer.drain()
        writer.close()

    server = await front_door.start_server(hypercorn_callback, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        taken = await asyncio.to_thread(_exchange, port, [b"SYNC hello"], b"hello")
        assert taken == b"taken:SYNC hello" and served.endpoint.taken == [b"SYNC hello"]
        assert handed == []  # no StreamReader, StreamWriter or task for the taken connection
        streamed = await asyncio.to_thread(_exchange, port, [b"REST", b" hello"], b"streamed")
        assert streamed == b"streamed" and handed == [b"REST hello"]
        started = time.monotonic()
        silent = await asyncio.to_thread(_exchange, port, [], b"never")
        assert silent == b"" and 0.3 < time.monotonic() - started < 5  # closed after silent_timeout
        assert handed == [b"REST hello"] and len(served.endpoint.taken) == 1
    finally:
        server.close()
        await server.wait_closed()
