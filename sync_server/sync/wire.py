"""The outgoing websocket write path, made cheap for the relay.

Going through ASGI, every frame to every peer costs a wsproto encode, a lock, a write syscall and a
drain in Hypercorn (~20 us of Python each; 5 peers make 100 us per update). Server-to-client frames
are never masked, so a binary frame's bytes are the same for every peer: the room encodes the frame
once (`binary_frame`) and each peer's sender writes all its queued frames with one write
(`raw_writer`), straight into Hypercorn's HTTP/1.1 stream (still under its send lock and drain, so
Hypercorn's own pings and close frames never interleave inside ours).

`raw_writer` returns None where that path is not available (HTTP/2 websockets, another server,
a Hypercorn whose internals changed: then a WARNING `third_party_patch_off`, once); the peer then uses
plain ASGI sends of y-websocket messages. The process-wide patches of Hypercorn and wsproto live in
sync_server.node.patches.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

log = structlog.get_logger("sync_server.sync.wire")
_warned = False


def _off(reason: str) -> None:
    """The fast path is off for a reason worth an operator's eye (not HTTP/2 or another server's
    normal case): say so once a process, not once a connection."""
    global _warned
    if not _warned:
        _warned = True
        log.warning("third_party_patch_off", patch="raw_writer", package="hypercorn", reason=reason)


def binary_frame(payload: bytes) -> bytes:
    """One unmasked, final, binary websocket frame carrying `payload` (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x82, n)) + payload
    if n < 65536:
        return b"\x82\x7e" + struct.pack("!H", n) + payload
    return b"\x82\x7f" + struct.pack("!Q", n) + payload


def _lean(send) -> Any:
    """The sync.transport WebsocketProtocol behind `send`, if it is one (it writes frames itself)."""
    owner = getattr(send, "__self__", None)
    return owner if getattr(type(owner), "takes_frames", False) else None


def raw_writer(scope: dict, send) -> Callable[[bytes], Awaitable[None]] | None:
    lean = _lean(send)
    if lean is not None:
        return lean.write_frames
    if scope.get("http_version") not in ("1.1", "1.0"):
        return None
    try:
        from hypercorn.protocol.events import Data
        from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
    except ImportError as exc:
        _off(f"import failed: {exc}")
        return None
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream):
        return None  # another server, or a wrapped send: plain ASGI sends
    if (
        not hasattr(stream, "stream_id")
        or not callable(getattr(stream, "send", None))
        or not hasattr(stream, "closed")
        or not hasattr(stream, "state")
    ):
        _off("WSStream no longer has stream_id / send / closed / state")
        return None
    stream_send = stream.send
    stream_id = stream.stream_id
    connected = ASGIWebsocketState.CONNECTED

    async def write(data: bytes) -> None:
        if stream.closed or stream.state is not connected:
            raise ConnectionError("websocket closed")
        await stream_send(Data(stream_id=stream_id, data=data))

    return write


class FrameSocket(Protocol):
    """Where a Connection writes ready-made frames straight away (`Socket`, sync.transport)."""

    def writable(self) -> bool: ...

    def write(self, data: bytes) -> None: ...


class Socket:
    """The socket under one Hypercorn HTTP/1.1 websocket, for writing ready-made frames straight to
    the asyncio transport without a task, lock or await (issue 20: the per-delivery cost of a
    fan-out). `writable()` is True while the websocket is open and the transport's buffer is under
    `HIGH_WATER` (the point where Hypercorn's own drain would wait): a frame written then is taken
    whole by the transport (sent now, or buffered by asyncio), so frames never interleave with
    Hypercorn's own pings, pongs and close frames, which it also writes whole. Past that the
    connection queues and drains through `raw_writer` (Hypercorn's lock and drain)."""

    __slots__ = ("_transport", "_stream", "_connected")

    def __init__(self, transport, stream, connected) -> None:
        self._transport = transport
        self._stream = stream
        self._connected = connected

    def writable(self) -> bool:
        stream = self._stream
        return (
            stream.state is self._connected
            and not stream.closed
            and self._transport.get_write_buffer_size() < HIGH_WATER
            and not self._transport.is_closing()
        )

    def write(self, data: bytes) -> None:
        self._transport.write(data)


HIGH_WATER = 64 * 1024  # asyncio's default high-water mark, where Hypercorn's drain starts waiting


def raw_socket(send) -> FrameSocket | None:
    """The `Socket` of a websocket served by Hypercorn over HTTP/1.1 (its stream's send is
    H11Protocol.stream_send, whose send is TCPServer.protocol_send, whose writer holds the
    transport), or the lean transport's protocol itself (sync.transport), or None anywhere else
    (then frames go through `raw_writer`)."""
    lean = _lean(send)
    if lean is not None:
        return lean
    try:
        from hypercorn.asyncio.tcp_server import TCPServer
        from hypercorn.protocol.h11 import H11Protocol
        from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
    except ImportError:
        return None
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream):
        return None
    h11 = getattr(getattr(stream, "send", None), "__self__", None)
    server = getattr(getattr(h11, "send", None), "__self__", None)
    if not isinstance(h11, H11Protocol) or not isinstance(server, TCPServer):
        return None
    transport = getattr(getattr(server, "writer", None), "transport", None)
    if transport is None or not callable(getattr(transport, "get_write_buffer_size", None)):
        _off("TCPServer.writer.transport is gone")
        return None
    return Socket(transport, stream, ASGIWebsocketState.CONNECTED)


def install_intake(send, intake) -> bool:
    """Hand Hypercorn's stream of this websocket its `Intake` (sync_server.sync.intake), read by the
    node's `websocket_intake` patch. False where there is no such stream (another server) or the
    patch is off: then Hypercorn's own frame limit applies and there is no budget."""
    stream = getattr(send, "__self__", None)
    if stream is None or not getattr(type(stream), "reads_sync_intake", False):
        return False
    stream.sync_intake = intake
    return True
