"""sync_server.node.http1: plain HTTP/1.1 served by uvicorn's httptools protocol from the front door,
with the limits Hypercorn enforced: which connections it takes (the rest reach Hypercorn with every
byte), hostile heads (431/400), huge bodies (413, then closed), slow and silent clients, keep-alive,
pipelining, upgrades on a kept-alive connection, and graceful shutdown with an idle keep-alive
connection and one mid-request. Real servers and sockets; the same bytes are sent to a server with
HTTP_TRANSPORT=hypercorn where the answers must match."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time

import pytest
from hypercorn.config import Config

from sync_server.node import front_door
from sync_server.node.http1 import Http1

from .conftest import TEST_SECRET
from .support import sync_peers
from .support.server import ServerProcess

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _talk(
    port: int, pieces: list[bytes], *, pause: float = 0.05, timeout: float = 15.0, eof: bool = False
) -> tuple[bytes, float]:
    """Send `pieces` (a pause between them), then read until the server closes: (bytes, seconds
    from the last piece sent to the close; `timeout` if it never closed)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b""
        for piece in pieces:
            try:
                sock.sendall(piece)
            except OSError:
                break
            time.sleep(pause)
        if eof:
            sock.shutdown(socket.SHUT_WR)
        sent = time.monotonic()
        sock.settimeout(timeout)
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            return data, timeout
        except ConnectionResetError:
            pass
        return data, time.monotonic() - sent


def _statuses(data: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", data)


def _upgrade(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


@pytest.fixture
def hypercorn_server(server_env, tmp_path):
    """The same server with every HTTP/1.1 request left to Hypercorn (the behaviour to match)."""
    proc = ServerProcess({**server_env, "HTTP_TRANSPORT": "hypercorn"}, log_path=tmp_path / "hypercorn.log").start()
    yield proc
    proc.stop()


# -- which connections the Http1 service takes (in process, real sockets, a real ASGI app) ------


async def _app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = f"{scope['method']} {scope['path']} {len(body)}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def door():
    config = Config()
    config.keep_alive_timeout = 0.6
    saved = (front_door.SERVED.endpoint, front_door.SERVED.silent_timeout, front_door.SERVED.http1)
    front_door.SERVED.endpoint, front_door.SERVED.silent_timeout = None, 0.6
    front_door.SERVED.http1 = Http1(_app, config)
    handed: list[bytes] = []

    async def hypercorn_callback(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handed.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"hypercorn")
        await writer.drain()
        writer.close()

    server = await front_door.start_server(hypercorn_callback, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], handed
    finally:
        server.close()
        await server.wait_closed()
        front_door.SERVED.endpoint, front_door.SERVED.silent_timeout, front_door.SERVED.http1 = saved


async def test_plain_requests_are_served_here_upgrades_http2_and_oversized_heads_reach_hypercorn(door):
    port, handed = door
    post = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    data, _ = await asyncio.to_thread(_talk, port, [HEALTH + post])
    assert data.count(b"HTTP/1.1 200 OK") == 2 and data.index(b"GET /healthz 0") < data.index(b"POST /x 5"), data
    # split anywhere, even a byte at a time: the head is read on until complete, then served here
    data, _ = await asyncio.to_thread(_talk, port, [post[i : i + 1] for i in range(len(post))], pause=0.002)
    assert b"POST /x 5" in data and handed == []
    for head in (
        _upgrade("/elsewhere"),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * (17 * 1024) + b"\r\n\r\n",
    ):
        for pieces in ([head], [head[:10], head[10:]]):
            data, _ = await asyncio.to_thread(_talk, port, pieces)
            assert data == b"hypercorn", (head[:40], data[:100])
            assert handed[-1] == head[: head.index(b"\r\n\r\n") + 4]  # every byte, from the first


async def test_a_head_that_never_completes_is_closed_after_keep_alive_timeout(door):
    port, handed = door
    data, waited = await asyncio.to_thread(_talk, port, [b"GET /healthz HTTP/1.1\r\n"])
    assert data == b"" and 0.3 < waited < 3, waited
    # trickling bytes do not keep it open (Hypercorn's idle timer is not reset by data either)
    started = time.monotonic()
    data, _ = await asyncio.to_thread(_talk, port, [b"GET /", b"h", b"e", b"a", b"l", b"t", b"h"] * 3, pause=0.1)
    assert b"HTTP" not in data and time.monotonic() - started < 3.5 and handed == []


# -- the real server: answers and limits as Hypercorn's -----------------------------------------


HOSTILE = {  # (the bytes, the status Hypercorn answers: the second, after a request, when it differs)
    # h11's limit is on an incomplete head: 20 KiB in one read passes, past one 64 KiB read it cannot
    "a 20 KiB head": (b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * (20 * 1024) + b"\r\n\r\n", b"200"),
    "a 100 KiB header": (b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * (100 * 1024) + b"\r\n\r\n", b"431"),
    "8,000 headers": (b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + b"X-A: aaaaaaaaaa\r\n" * 8000 + b"\r\n", b"431"),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", b"400"),
    "no Host": (b"GET /healthz HTTP/1.1\r\n\r\n", b"400"),
    "bad request line": (b"GET /healthz HTTP/9.9 extra\r\nHost: a\r\n\r\n", b"400"),
    "bad header": (b"GET /healthz HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", b"400"),
    "two content lengths": (
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"400",
    ),
}


async def test_hostile_heads_get_hypercorns_status_first_and_on_a_kept_alive_connection(server, hypercorn_server):
    for name, (head, status) in HOSTILE.items():
        answers = []
        for srv in (server, hypercorn_server):
            first, _ = await asyncio.to_thread(_talk, srv.port, [head])
            later, _ = await asyncio.to_thread(_talk, srv.port, [HEALTH, head], pause=0.3)
            answers.append((_statuses(first), _statuses(later)))
        ours, hypercorns = answers
        assert ours == hypercorns == ([status], [b"200", status]), (name, ours, hypercorns)
    data, _ = await asyncio.to_thread(_talk, server.port, [HEALTH, HOSTILE["a 100 KiB header"][0]], pause=0.3)
    refusal = data[data.index(b"HTTP/1.1 431") :]
    assert refusal.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n") and b"connection: close" in refusal
    # the client stops sending mid-head (half-closes): the same answer as Hypercorn's, on both sides
    for pieces in ([b"GET /healthz HTTP/1.1\r\nHo"], [HEALTH, b"GET /healthz HTTP/1.1\r\nHo"]):
        ours, _ = await asyncio.to_thread(_talk, server.port, pieces, pause=0.3, eof=True)
        hypercorns, _ = await asyncio.to_thread(_talk, hypercorn_server.port, pieces, pause=0.3, eof=True)
        assert _statuses(ours) == _statuses(hypercorns), (pieces, ours, hypercorns)
    # a head trickling past the limit in pieces: 431 too, before it is complete
    pieces = [HEALTH, b"GET /healthz HTTP/1.1\r\nHost: a\r\n"] + [b"X-Slow: " + b"x" * 4000 + b"\r\n"] * 6
    for srv in (server, hypercorn_server):
        data, _ = await asyncio.to_thread(_talk, srv.port, pieces, pause=0.1)
        assert _statuses(data) == [b"200", b"431"], data[-300:]


async def test_a_body_past_the_limit_is_answered_413_and_the_connection_closed_unread(server):
    head = (
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    )
    data, waited = await asyncio.to_thread(_talk, server.port, [head % (64 * 1024 * 1024) + b'{"em'])
    assert _statuses(data) == [b"413"] and waited < 5, (data[:300], waited)
    assert b"request_entity_too_large" in data


async def test_reason_phrases_date_server_and_request_ids(server, hypercorn_server):
    heads = []
    for srv in (server, hypercorn_server):
        data, _ = await asyncio.to_thread(
            _talk,
            srv.port,
            [
                HEALTH[:-2]
                + b"X-Request-ID: req-123\r\n\r\n"
                + b"GET /nowhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            ],
        )
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"HTTP/1.1 404 Not Found\r\n" in data, data
        head = data.split(b"\r\n\r\n")[0].lower().split(b"\r\n")[1:]
        heads.append(sorted(h.split(b":")[0] for h in head))
        assert b"x-request-id: req-123" in head
        assert any(h.startswith(b"date: ") and h.endswith(b" gmt") for h in head), head
    assert heads[0] == heads[1]  # the same header names (date, server, content-type, length, id)
    assert any(h.startswith(b"server: ") for h in data.lower().split(b"\r\n"))


async def test_pipelined_requests_are_answered_in_order(server):
    requests = b"".join(
        f"{method} {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
        for method, path in (("GET", "/healthz"), ("GET", "/nowhere"), ("HEAD", "/healthz"), ("GET", "/readyz"))
    )
    data, _ = await asyncio.to_thread(
        _talk, server.port, [requests + b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"]
    )
    assert _statuses(data) == [b"200", b"404", b"200", b"200", b"200"], data
    assert data.count(b'{"status":"ok"}') == 2 and data.endswith(b'{"status":"ok"}'), data  # HEAD: no body


async def test_idle_keep_alive_and_slow_heads_are_closed_after_keep_alive_timeout(server):
    started = time.monotonic()
    data, waited = await asyncio.to_thread(_talk, server.port, [HEALTH])
    assert _statuses(data) == [b"200"] and 4.0 <= waited <= 8.0, waited  # Hypercorn's keep_alive_timeout: 5 s
    # slowloris: a byte a second of the next head does not keep the connection (nor of the first)
    for first in (HEALTH, b""):
        trickle = [first] + [bytes((b,)) for b in b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaa"]
        started = time.monotonic()
        data, _ = await asyncio.to_thread(_talk, server.port, trickle, pause=0.5, timeout=20)
        assert _statuses(data) == ([b"200"] if first else []) and time.monotonic() - started < 13, (
            data,
            time.monotonic() - started,
        )


async def test_the_thousandth_request_on_a_connection_says_close(server):
    def run() -> list[bytes]:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.settimeout(10)
            data = b""
            for batch in range(1, 11):
                sock.sendall(HEALTH * 100)  # pipelined, a hundred at a time
                while data.count(b'"ok"') < 100 * batch:
                    chunk = sock.recv(65536)
                    assert chunk, f"closed after {data.count(b'ok')} answers"
                    data += chunk
            while chunk := sock.recv(65536):
                data += chunk
            return [h for h in data.split(b"\r\n") if h.startswith(b"connection:")]

    assert await asyncio.to_thread(run) == [b"connection: close"]


async def test_an_upgrade_after_a_rest_request_on_the_same_connection_reaches_hypercorn(server, database_url):
    customer = await sync_peers.create_customer(database_url, "h1upgrade")
    path = f"/sync/{customer.slug}/fleet?token={sync_peers.token(TEST_SECRET, customer)}"

    def run() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.settimeout(10)
            sock.sendall(HEALTH)
            data = b""
            while b'"ok"' not in data:
                data += sock.recv(65536)
            sock.sendall(_upgrade(path))
            while len(data.partition(b"HTTP/1.1 101 ")[2].partition(b"\r\n\r\n")[2]) < 4:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data

    data = await asyncio.to_thread(run)
    assert b"HTTP/1.1 101 " in data, data[:400]
    frame = data.partition(b"HTTP/1.1 101 ")[2].partition(b"\r\n\r\n")[2]
    assert frame[:1] == b"\x82", frame[:10]  # sync step 1 from the room, over Hypercorn's websocket


async def test_shutdown_closes_idle_keep_alive_connections_and_finishes_the_request_in_flight(server):
    def run() -> tuple[bytes, bytes, float]:
        idle = socket.create_connection(("127.0.0.1", server.port))
        busy = socket.create_connection(("127.0.0.1", server.port))
        for sock in (idle, busy):
            sock.settimeout(20)
        idle.sendall(HEALTH)
        kept = idle.recv(65536)
        body = b'{"email": "nobody@example.com", "password": "not-this-one"}'
        busy.sendall(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:10]
        )
        time.sleep(0.3)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        while chunk := idle.recv(65536):
            kept += chunk
        idle_closed = time.monotonic() - started
        busy.sendall(body[10:])  # the request in flight is still read and answered
        answer = b""
        while chunk := busy.recv(65536):
            answer += chunk
        server.proc.wait(20)
        idle.close()
        busy.close()
        return kept, answer, idle_closed, time.monotonic() - started

    kept, answer, idle_closed, took = await asyncio.to_thread(run)
    # closed by the shutdown, well before its keep-alive timeout (5 s) would have closed it
    assert _statuses(kept) == [b"200"] and idle_closed < 3.5, (kept, idle_closed)
    assert _statuses(answer) == [b"401"] and b"connection: close" in answer.lower(), answer
    assert took < 15 and server.proc.returncode == 0, (took, server.proc.returncode)
    assert "Traceback" not in server.log_text()
