"""The outgoing websocket write path, made cheap for the relay.

Going through ASGI, every frame to every peer costs a wsproto encode, a lock, a write syscall and a
drain in Hypercorn (~20 us of Python each; 5 peers make 100 us per update). Server-to-client frames
are never masked, so a binary frame's bytes are the same for every peer: the room encodes the frame
once (`binary_frame`) and each peer's sender writes all its queued frames with one write
(`raw_writer`), straight into Hypercorn's HTTP/1.1 stream (still under its send lock and drain, so
Hypercorn's own pings and close frames never interleave inside ours).

`raw_writer` returns None where that path is not available (HTTP/2 websockets, another server,
a Hypercorn whose internals changed); the peer then uses plain ASGI sends of y-websocket messages.
"""
from __future__ import annotations

import struct
from typing import Awaitable, Callable


def binary_frame(payload: bytes) -> bytes:
    """One unmasked, final, binary websocket frame carrying `payload` (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x82, n)) + payload
    if n < 65536:
        return b"\x82\x7e" + struct.pack("!H", n) + payload
    return b"\x82\x7f" + struct.pack("!Q", n) + payload


def raw_writer(scope: dict, send) -> Callable[[bytes], Awaitable[None]] | None:
    if scope.get("http_version") not in ("1.1", "1.0"):
        return None
    try:
        from hypercorn.protocol.events import Data
        from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
    except ImportError:
        return None
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream) or not hasattr(stream, "stream_id") or not callable(
            getattr(stream, "send", None)):
        return None
    stream_send = stream.send
    stream_id = stream.stream_id
    connected = ASGIWebsocketState.CONNECTED

    async def write(data: bytes) -> None:
        if stream.closed or stream.state is not connected:
            raise ConnectionError("websocket closed")
        await stream_send(Data(stream_id=stream_id, data=data))

    return write


def coalesce_response_head() -> None:
    """Hypercorn's HTTP/1.1 protocol writes a response's head and its body with two writes: two
    syscalls and, over loopback, two wakeups of the client (strace: every REST answer). Hold the
    head back and write it together with what follows it (the body, the end of the message, or
    nothing when the stream closes first). Interim responses (100, 101) are written at once."""
    import h11
    from hypercorn.events import RawData
    from hypercorn.protocol.events import StreamClosed
    from hypercorn.protocol.h11 import H11Protocol

    if getattr(H11Protocol, "coalesces_response_head", False):
        return
    if not (callable(getattr(H11Protocol, "_send_h11_event", None)) and callable(getattr(H11Protocol, "stream_send", None))):
        return  # a Hypercorn whose internals changed: keep its own two writes
    send_event = H11Protocol._send_h11_event
    stream_send = H11Protocol.stream_send

    async def _send_h11_event(self, event) -> None:
        held = self.__dict__.pop("held_head", b"")
        if not held and not isinstance(event, h11.Response):
            await send_event(self, event)
            return
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            data = b""
        if isinstance(event, h11.Response):
            self.held_head = held + data
        else:
            await self.send(RawData(data=held + data))

    async def _stream_send(self, event) -> None:
        if isinstance(event, StreamClosed) and self.__dict__.get("held_head"):
            await self.send(RawData(data=self.__dict__.pop("held_head")))
        await stream_send(self, event)

    H11Protocol._send_h11_event = _send_h11_event
    H11Protocol.stream_send = _stream_send
    H11Protocol.coalesces_response_head = True


def fast_unmasking() -> None:
    """wsproto unmasks what clients send with bytes.translate over four strided slices: ~7 ns a
    byte, so a phone's 3.6 MB offline day held the event loop ~25 ms (py-spy: 1 in 14 of the loop's
    samples during a 4-phone upload). XOR of the payload's 32-bit words with the key (numpy) does the
    same in ~1 ms; the key rotates across a frame's chunks exactly as wsproto's does."""
    import numpy as np

    try:
        from wsproto import frame_protocol
    except ImportError:
        return
    masker = getattr(frame_protocol, "XorMaskerSimple", None)
    if masker is None or getattr(masker, "unmasks_words", False):
        return
    try:
        probe = masker(b"\x00\x01\x02\x03")
    except TypeError:
        return
    if probe.__dict__.get("_masking_key") != b"\x00\x01\x02\x03" or not callable(getattr(masker, "process", None)):
        return  # a wsproto whose masker changed: keep its own

    def process(self, data) -> bytearray:
        data = bytearray(data)
        n = len(data)
        if n:
            key = bytes(self._masking_key)
            whole = n - n % 4
            if whole:
                words = np.frombuffer(data, dtype=np.uint32, count=whole // 4)
                np.bitwise_xor(words, np.frombuffer(key, dtype=np.uint32)[0], out=words)
            for i in range(whole, n):
                data[i] ^= key[i - whole]
            self._masking_key = key[n % 4:] + key[:n % 4]
        return data

    masker.process = process
    masker.unmasks_words = True
