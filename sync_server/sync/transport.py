"""The lean websocket transport (issue 20): a sync websocket served straight on the asyncio
transport, an `asyncio.Protocol` per socket instead of Hypercorn's stream objects.

Hypercorn keeps, per open websocket, a TCP server task, stream reader and writer, a task group, an
HTTP/1.1 protocol, a websocket stream, a wsproto connection and an application queue: ~22 KB of
Python objects (tracemalloc, bench/websocket_path.md) and a handful of awaits per frame. Here the
node's patch of Hypercorn's connection handler (sync_server.node.patches `websocket_takeover`)
reads the first request of a connection; when it is a websocket upgrade to /sync/ the socket is
handed to `WebsocketProtocol` before Hypercorn builds anything, and Hypercorn's task ends. What is
not a plain, valid websocket upgrade (another path, HTTP/2, TLS, a malformed head) stays Hypercorn's.

The protocol speaks RFC 6455 itself (server side: masked client frames, fragmentation, ping/pong,
close handshake; permessage-deflate is declined, as on the Hypercorn path) and offers the sync
endpoint the same ASGI websocket interface Hypercorn does (`receive` / `send`), so every rule of
the endpoint (authentication, refusals and their holds, close codes, intake, credentials) is the
same code on both paths. What differs is the cost:

- a frame to a peer is written to the transport by the caller (`writable` / `write`, the
  Connection's direct path) or through `write_frames` (awaits the transport's drain);
- received frames are parsed from the transport's buffer and counted in the node's frame budget
  (sync.intake) chunk by chunk as they arrive; a large message waiting for the budget pauses
  reading the socket (TCP backpressure), as Hypercorn's awaiting does, and so does an endpoint
  that has `MAX_PENDING` messages it has not read yet;
- pings and pongs of the peer are activity (Intake.alive), pings are answered at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import numpy as np
import structlog

from sync_server.sync.wire import HIGH_WATER

log = structlog.get_logger("sync_server.sync.transport")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16 * 1024  # a longer request head goes to Hypercorn (which answers it)
MAX_PENDING = 16  # received messages the endpoint has not read: past it the socket is not read
PRE_ACCEPT_BYTES = 64 * 1024  # read before the endpoint accepted (it is authenticating): then not read
INTERRUPTED = {"type": "websocket.disconnect", "code": 1000, "interrupted": True}
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INTERNAL_ERROR = 1011
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class Upgrade:
    """A websocket upgrade request, as far as the transport needs it."""

    __slots__ = ("path", "query", "headers", "key", "subprotocols")

    def __init__(
        self, path: str, query: bytes, headers: list[tuple[bytes, bytes]], key: bytes, subprotocols: list[str]
    ):
        self.path = path
        self.query = query
        self.headers = headers
        self.key = key
        self.subprotocols = subprotocols


def parse_upgrade(data: bytes, prefix: bytes) -> tuple[Upgrade, bytes] | None:
    """The upgrade request at the start of `data` and the bytes after its head, or None when
    `data` does not start with a complete, valid websocket upgrade of a path under `prefix`
    (then Hypercorn serves the connection and answers whatever it is)."""
    if not data.startswith(b"GET " + prefix):
        return None
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    target, _, version = rest.partition(b" ")
    if version != b"HTTP/1.1" or b" " in target:
        return None
    headers: list[tuple[bytes, bytes]] = []
    named: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name:
            return None
        name = name.lower()
        value = value.strip()
        headers.append((name, value))
        named[name] = named[name] + b", " + value if name in named else value
    connection = {t.strip() for t in named.get(b"connection", b"").lower().split(b",")}
    key = named.get(b"sec-websocket-key", b"")
    if (
        named.get(b"upgrade", b"").lower() != b"websocket"
        or b"upgrade" not in connection
        or named.get(b"sec-websocket-version") != b"13"
        or b"host" not in named
        or len(key) != 24
    ):
        return None
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
        path = target.partition(b"?")[0].decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    if "%" in path:
        return None  # percent-encoded paths: Hypercorn decodes them (its rules, not a second copy)
    query = target.partition(b"?")[2]
    protocols = [p.strip().decode("latin1") for p in named.get(b"sec-websocket-protocol", b"").split(b",") if p.strip()]
    return Upgrade(path, query, headers, key, protocols), data[end + 4 :]


def accept_head(key: bytes, subprotocol: str | None) -> bytes:
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
        + accept
    )
    if subprotocol:
        head += b"\r\nSec-WebSocket-Protocol: " + subprotocol.encode("latin1")
    return head + b"\r\n\r\n"


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame (server to client)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode("utf-8")[:123])


def unmask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """XOR with the 4-byte masking key (key already rotated to where `data` starts)."""
    n = len(data)
    out = bytearray(data)
    whole = n - n % 4
    if whole >= 64:
        words = np.frombuffer(out, dtype=np.uint32, count=whole // 4)
        np.bitwise_xor(words, np.frombuffer(key, dtype=np.uint32)[0], out=words)
        start = whole
    else:
        start = 0
    for i in range(start, n):
        out[i] ^= key[i % 4]
    return bytes(out)


class WebsocketProtocol(asyncio.Protocol):
    """One websocket taken over from Hypercorn: the ASGI side (`receive`, `send`) for the sync
    endpoint, the socket side for the Connection's writes (`writable`, `write`, `write_frames`)."""

    reads_sync_intake = True  # sync.wire.install_intake: the endpoint hands its Intake here
    takes_frames = True  # sync.wire.raw_writer / raw_socket: frames are written here

    __slots__ = (
        "transport",
        "sync_intake",
        "_buf",
        "_events",
        "_waiter",
        "_frame_left",
        "_mask",
        "_fin",
        "_opcode",
        "_message",
        "_refusing",
        "_close_sent",
        "_closed",
        "_reading",
        "_budget_wait",
        "_drained",
        "_paused",
        "_accepted",
        "_key",
        "_head",
        "tasks",
    )

    def __init__(self, transport: asyncio.Transport, rest: bytes) -> None:
        self.transport = transport
        self.sync_intake: Any = None
        self._buf = bytearray(rest)
        self._events: list[dict] = []  # a few at most (MAX_PENDING): a list is the smaller
        self._waiter: asyncio.Future | None = None
        self._frame_left = 0  # payload bytes of the current data frame still to come
        self._mask = b""  # its masking key, rotated to the next byte
        self._fin = False
        self._opcode = 0  # of the message being received (OP_TEXT / OP_BINARY), 0 between messages
        self._message: bytearray | None = None
        self._refusing = False  # dropping the rest of a message past the limit
        self._close_sent = False
        self._closed = False  # the socket is gone (or being closed by us)
        self._reading = True
        self._budget_wait: asyncio.Task | None = None
        self._drained: asyncio.Future | None = None
        self._paused = False  # the transport asked us to stop writing
        self._accepted = False
        self._key = b""  # the client's Sec-WebSocket-Key
        self._head = b""  # the 101 response until it is written with the first frames (or alone)
        self.tasks: set[asyncio.Task] | None = None  # the endpoint's set of serving tasks (left in `served`)
        self._events.append({"type": "websocket.connect"})

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._accepted:  # frames wait for the accept (no frame budget yet): only a little of them
            if len(self._buf) > PRE_ACCEPT_BYTES and self._reading and not self._closed:
                self._reading = False
                self.transport.pause_reading()
        elif self._budget_wait is None:
            self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._push({"type": "websocket.disconnect", "code": 1006 if not self._close_sent else 1000})
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def eof_received(self) -> bool:
        return False  # close the transport

    # -- the socket side (sync.connection) -------------------------------------------------------

    def writable(self) -> bool:
        return not self._close_sent and not self._closed and self.transport.get_write_buffer_size() < HIGH_WATER

    def write(self, data: bytes) -> None:
        if self._head:  # the accept and the join's first frames leave in one write
            data = self._head + data
            self._head = b""
        self.transport.write(data)

    def _flush_head(self) -> None:
        if self._head and not self._closed:
            self.write(b"")

    async def write_frames(self, data: bytes) -> None:
        if self._close_sent or self._closed:
            raise ConnectionError("websocket closed")
        self.write(data)
        await self._drain()

    async def _drain(self) -> None:
        while self._paused and not self._closed:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    # -- the ASGI side (sync.endpoint) -----------------------------------------------------------

    async def receive(self) -> dict:
        events = self._events
        if not events and self._closed:
            return {"type": "websocket.disconnect", "code": 1006}
        while not events:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event = events.pop(0)
        if not self._reading and len(events) < MAX_PENDING // 2:
            self._reading = True
            if not self._closed:
                self.transport.resume_reading()
        return event

    async def send(self, message: dict) -> None:
        if self._closed:
            return  # as Hypercorn: the app may finish after the peer left
        kind = message["type"]
        if kind == "websocket.accept":
            self._accepted = True
            self._head = accept_head(self._key, message.get("subprotocol"))
            asyncio.get_running_loop().call_soon(self._flush_head)  # at the latest when this turn ends
            if self._buf:
                self._parse()
            if not self._reading and not self._closed and len(self._events) < MAX_PENDING:
                self._reading = True
                self.transport.resume_reading()
        elif self._close_sent:
            return
        elif kind == "websocket.send":
            data = message.get("bytes")
            if data is not None:
                await self.write_frames(frame(OP_BINARY, bytes(data)))
            else:
                await self.write_frames(frame(OP_TEXT, str(message["text"]).encode("utf-8")))
        elif kind == "websocket.close":
            self._send_close(int(message.get("code", 1000)), message.get("reason") or "")

    def _send_close(self, code: int, reason: str = "") -> None:
        if not self._close_sent and not self._closed:
            self._close_sent = True
            self.write(close_frame(code, reason))

    def interrupt(self) -> None:
        """The server decided to close this peer (Connection.on_abort): the endpoint's reading
        stops at its next receive, before frames still waiting (as the Hypercorn path cancels it)."""
        self._events.insert(0, INTERRUPTED)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def served(self, task: asyncio.Task) -> None:
        """The endpoint's task for this socket ended (a done callback): log a failure, close."""
        if self.tasks is not None:
            self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sync_connection_failed", error=repr(task.exception()), exc_info=task.exception())
        self.finish()

    def finish(self) -> None:
        """The endpoint is done with this socket: close it (1011 first if it never said why)."""
        if not self._closed:
            if not self._close_sent:
                self._send_close(CLOSE_INTERNAL_ERROR)
            self._closed = True
            self.transport.close()
        intake = self.sync_intake
        if intake is not None:
            intake.close()

    # -- receiving frames ------------------------------------------------------------------------

    def _push(self, event: dict) -> None:
        self._events.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(self._events) >= MAX_PENDING and self._reading and not self._closed:
            self._reading = False
            self.transport.pause_reading()

    def _fail(self, code: int, reason: str) -> None:
        self._buf.clear()
        self._send_close(code, reason)
        self._closed = True
        self.transport.close()
        self._push({"type": "websocket.disconnect", "code": code})

    def _parse(self) -> None:
        buf = self._buf
        while buf and not self._closed:
            if self._frame_left:
                if not self._payload(buf):
                    return
                continue
            if len(buf) < 2:
                return
            b0, b1 = buf[0], buf[1]
            opcode = b0 & 0x0F
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                pos = 4
            elif n == 127:
                pos = 10
            if len(buf) < pos + 4:
                return
            if pos == 4:
                n = int.from_bytes(buf[2:4], "big")
            elif pos == 10:
                n = int.from_bytes(buf[2:10], "big")
                if n >> 63:
                    self._fail(CLOSE_PROTOCOL_ERROR, "invalid frame length")  # RFC 6455 5.2: top bit 0
                    return
            if b0 & 0x70 or not b1 & 0x80:
                self._fail(CLOSE_PROTOCOL_ERROR, "masked frames without extensions only")
                return
            key = bytes(buf[pos : pos + 4])
            fin = bool(b0 & 0x80)
            if opcode >= 8:  # control frame: whole, small, answered at once
                if n > 125 or not fin:
                    self._fail(CLOSE_PROTOCOL_ERROR, "invalid control frame")
                    return
                if len(buf) < pos + 4 + n:
                    return
                payload = unmask(buf[pos + 4 : pos + 4 + n], key)
                del buf[: pos + 4 + n]
                self._control(opcode, payload)
                continue
            if opcode == OP_CONT:
                if not self._opcode:
                    self._fail(CLOSE_PROTOCOL_ERROR, "continuation without a message")
                    return
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._opcode:
                    self._fail(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
                    return
                self._opcode = opcode
                if not self._refusing:
                    self._message = bytearray()
            else:
                self._fail(CLOSE_PROTOCOL_ERROR, "unknown opcode")
                return
            del buf[: pos + 4]
            self._frame_left = n
            self._mask = key
            self._fin = fin
            message, intake = self._message, self.sync_intake
            if message is not None and intake is not None and not intake.closed and intake.refuses(n, len(message)):
                # declared past the limit: refused now, not after the limit's worth of it was read
                self._too_big(len(message) + n, False)  # the rest of the message is read and dropped
            if n == 0 and not self._payload(buf):
                return

    def _payload(self, buf: bytearray) -> bool:
        """Take what the buffer holds of the current frame's payload; False: wait (more bytes, or
        the frame budget)."""
        take = min(len(buf), self._frame_left)
        if take == 0 and self._frame_left:
            return False
        chunk = unmask(buf[:take], self._mask) if take else b""
        rotate = take % 4
        self._mask = self._mask[rotate:] + self._mask[:rotate]
        del buf[:take]
        self._frame_left -= take
        last = self._fin and not self._frame_left
        return self._accept_chunk(chunk, last)

    def _accept_chunk(self, chunk: bytes, last: bool) -> bool:
        intake = self.sync_intake
        message = self._message
        if self._refusing or message is None:
            if last:
                self._end_message()
            return True
        if intake is not None and not intake.closed:
            buffered = len(message)
            taken = intake.take(len(chunk), buffered)
            if taken is None:  # a large message and the budget is spent: stop reading until it is not
                self._wait_budget(chunk, last, buffered)
                return False
            if not taken:
                self._too_big(buffered + len(chunk), last)
                return True
        message += chunk
        if last:
            self._deliver()
        return True

    def _wait_budget(self, chunk: bytes, last: bool, buffered: int) -> None:
        if self._reading and not self._closed:
            self._reading = False
            self.transport.pause_reading()

        async def wait() -> None:
            try:
                ok = await self.sync_intake.chunk(len(chunk), buffered)
            finally:
                self._budget_wait = None
            if self._closed:
                return
            if not ok:
                self._too_big(buffered + len(chunk), last)
            else:
                assert self._message is not None
                self._message += chunk
                if last:
                    self._deliver()
            if len(self._events) < MAX_PENDING:
                self._reading = True
                self.transport.resume_reading()
            self._parse()

        self._budget_wait = asyncio.ensure_future(wait())

    def _too_big(self, size: int, last: bool) -> None:
        self._message = None
        self._refusing = not last
        if last:
            self._opcode = 0
        self._push({"type": "websocket.receive", "bytes": None, "text": None, "too_big": size})

    def _deliver(self) -> None:
        message = self._message
        opcode = self._opcode
        self._message = None
        self._opcode = 0
        intake = self.sync_intake
        if intake is not None and not intake.closed:
            intake.complete()
        assert message is not None
        if opcode == OP_BINARY:
            self._push({"type": "websocket.receive", "bytes": bytes(message), "text": None})
        else:
            try:
                text = message.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(1007, "invalid utf-8")
                return
            self._push({"type": "websocket.receive", "bytes": None, "text": text})

    def _end_message(self) -> None:
        self._message = None
        self._opcode = 0
        self._refusing = False

    def _control(self, opcode: int, payload: bytes) -> None:
        intake = self.sync_intake
        if opcode == OP_PING:
            if intake is not None:
                intake.alive()
            # a peer that pings and never reads would fill our write buffer with pongs: past the high
            # water mark pings go unanswered (RFC 6455 5.5.3 allows answering only the latest)
            if not self._close_sent and self.transport.get_write_buffer_size() < HIGH_WATER:
                self.write(frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            if intake is not None:
                intake.alive()
        elif opcode == OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if len(payload) == 1 or (len(payload) >= 2 and not _valid_close_code(code)):
                self._fail(CLOSE_PROTOCOL_ERROR, "invalid close frame")
                return
            if not self._close_sent:  # the peer closes first: answer with its code
                self._close_sent = True
                self.write(frame(OP_CLOSE, payload[:2]))
            self._closed = True
            self._buf.clear()
            self.transport.close()
            self._push({"type": "websocket.disconnect", "code": code})
        else:
            self._fail(CLOSE_PROTOCOL_ERROR, "unknown control opcode")


def _valid_close_code(code: int) -> bool:
    """A code a peer may send (RFC 6455 7.4: 1004-1006 and 1015 are never sent; 3000-4999 are
    registered or private)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or 3000 <= code <= 4999


def take_over(transport: asyncio.Transport, upgrade: Upgrade, rest: bytes) -> WebsocketProtocol:
    """Make `transport` (whose first request was `upgrade`) a WebsocketProtocol's."""
    protocol = WebsocketProtocol(transport, rest)
    protocol._key = upgrade.key
    transport.set_protocol(protocol)
    return protocol
