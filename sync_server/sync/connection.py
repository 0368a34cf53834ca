"""One websocket peer of a room: a bounded outgoing queue drained by its own sender task, and the
close decision. Transport-agnostic (the endpoint passes `send`/`close` callables), so a stalled or
failing peer can only ever affect itself.

Backpressure is explicit: a peer whose queue passes `queue_limit` frames or `queue_bytes` bytes is
closed with 1013 instead of growing server memory; its missed frames are recovered by the sync step
1/2 of its reconnect. Both bounds are needed: a frame count alone let 400 relayed updates of 200 KB
(80 MB) wait for one peer that never read. The bytes are a running total kept by enqueue and the
sender (no per-frame allocation). A single frame larger than `queue_bytes` is still accepted into an
empty queue: a joining peer must be able to receive a document's whole state in one step 2.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from sync_server.sync.protocol import step1_frame
from sync_server.sync.wire import FrameSocket, binary_frame

if TYPE_CHECKING:
    from sync_server.sync.rooms import Room

log = structlog.get_logger("sync_server.sync.connection")

# Close codes (RFC 6455 + the private range; y-websocket clients stop retrying on 4400-4499).
GOING_AWAY = 1001
INTERNAL_ERROR = 1011
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013
MALFORMED = 4400
UNAUTHORIZED = 4401
FORBIDDEN = 4403
TOO_BIG_AGAIN = 4413  # a frame over the hard limit again from the same client: 3.x stops retrying
PING_FRAME = b"\x89\x00"  # a websocket ping without payload (raw path)

QUEUE_BYTES = 16 * 1024 * 1024  # default bound of one peer's queued bytes (SYNC_SEND_QUEUE_BYTES)
Send = Callable[[bytes], Awaitable[None]]
WRITE_BUDGET = 256 * 1024  # bytes of queued frames joined into one write on the raw path
_EMPTY: deque[bytes] = deque(maxlen=0)  # the queue of every peer with nothing waiting (never appended to)


class Connection:
    __slots__ = (
        "customer_id",
        "doc",
        "can_write",
        "room",
        "awareness_ids",
        "denied_sent",
        "close_code",
        "close_reason",
        "_closed_event",
        "on_abort",
        "_send",
        "_queue",
        "_limit",
        "_bytes",
        "_byte_limit",
        "_wakeup",
        "_sender",
        "raw",
        "_socket",
        "peer",
        "last_seen",
        "session",
        "app_session",
        "previewed",
    )

    def __init__(
        self,
        send: Send,
        *,
        customer_id: str,
        doc: str,
        can_write: bool,
        queue_limit: int,
        queue_bytes: int = QUEUE_BYTES,
        peer: str = "",
        raw: bool = False,
        socket: FrameSocket | None = None,
    ) -> None:
        """send: ASGI-level send of one y-websocket message, or with raw=True a writer of
        ready-made websocket frames (sync_server.sync.wire), several per call. socket (raw only):
        frames are written straight to it while it takes them, and a sender task exists only while
        frames wait for it (no task per idle connection)."""
        self.customer_id = customer_id
        self.doc = doc
        self.can_write = can_write
        self.app_session = ""  # the app sign-in session it was opened with (hooks.Access.session)
        self.peer = peer
        self.room: Room | None = None
        self.awareness_ids: set[int] = set()  # awareness client ids this peer introduced
        self.denied_sent = False
        self.close_code: int | None = None
        self.close_reason = ""
        self._closed_event: asyncio.Event | None = None  # `closed`, made when first asked for
        self.on_abort: Callable[[], None] | None = None  # told when the server decides to close it
        self._send = send
        self._queue: deque[bytes] = _EMPTY  # a deque of its own once a frame waits
        self._limit = queue_limit
        self._bytes = 0  # bytes of the frames in _queue (what the sender has not taken yet)
        self._byte_limit = queue_bytes
        self._wakeup: asyncio.Future | None = None
        self._sender: asyncio.Task | None = None
        self.raw = raw
        self._socket = socket if raw else None
        self.last_seen = asyncio.get_running_loop().time()  # when the peer last sent a frame
        self.session: Any = None  # the endpoint's credentials.Session (None outside a websocket)
        # (room, state vector) of the doc sent while the room loaded (Room.loading), until its step 1
        self.previewed: tuple[Room, bytes] | None = None

    @property
    def closed(self) -> asyncio.Event:
        """Set when the server decided to close this peer."""
        event = self._closed_event
        if event is None:
            event = self._closed_event = asyncio.Event()
            if self.close_code is not None:
                event.set()
        return event

    def start(self) -> None:
        if self._socket is None:  # with a socket the sender starts when frames must wait
            self._sender = asyncio.ensure_future(self._drain())

    def takes_now(self) -> bool:
        """Whether a frame enqueued now is written to the socket at once (nothing waits before it)."""
        socket = self._socket
        return self.close_code is None and socket is not None and self._sender is None and socket.writable()

    def enqueue(self, frame: bytes, wire: bytes | None = None) -> None:
        """Queue a y-websocket message for this peer (never blocks; closes the peer 1013 past
        either bound). `wire`: the message already framed by wire.binary_frame (shared by a broadcast)."""
        if self.close_code is not None:
            return
        queue = self._queue
        if self.raw:
            frame = wire if wire is not None else binary_frame(frame)
            socket = self._socket
            if socket is not None and self._sender is None and socket.writable():
                socket.write(frame)  # nothing waits before it: straight to the transport
                return
        size = len(frame)
        if len(queue) >= self._limit or (queue and self._bytes + size > self._byte_limit):
            log.warning(
                "send_queue_full",
                customer_id=self.customer_id,
                room=self.doc,
                frames=len(queue),
                bytes=self._bytes,
                limit=self._limit,
                byte_limit=self._byte_limit,
            )
            self.abort(TRY_AGAIN_LATER, "send queue full")
            return
        if queue is _EMPTY:
            queue = self._queue = deque()
        queue.append(frame)
        self._bytes += size
        if self._socket is not None:
            if self._sender is None:
                self._sender = asyncio.ensure_future(self._drain())
            return
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)

    def ping(self) -> None:
        """Ask a quiet peer for a sign of life: a websocket ping on the raw path (its pong counts as
        activity, sync_server.sync.intake), else a sync step 1 with the room's state, which every
        y-websocket client and pycrdt Provider answers with a step 2 (of what the room lacks)."""
        if self.raw:
            self.enqueue(PING_FRAME, PING_FRAME)
        elif self.room is not None:
            self.enqueue(step1_frame(self.room.ydoc.get_state()))

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def abort(self, code: int, reason: str) -> None:
        """Decide to close this peer: pending frames are dropped, the endpoint sends the close."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        self._queue = _EMPTY
        self._bytes = 0
        if self._sender is not None and asyncio.current_task() is not self._sender:
            self._sender.cancel()  # it may be stuck writing to a peer that does not read
        if self._closed_event is not None:
            self._closed_event.set()
        if self.on_abort is not None:
            self.on_abort()

    async def stop(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            try:
                await self._sender
            except (asyncio.CancelledError, Exception):
                pass

    async def _drain(self) -> None:
        if self._queue is _EMPTY:
            self._queue = deque()
        queue = self._queue
        send = self._send
        loop = asyncio.get_running_loop()
        raw = self.raw
        try:
            while True:
                if raw:
                    while queue:
                        if len(queue) == 1:
                            part = queue.popleft()
                            self._bytes -= len(part)
                            await send(part)
                            continue
                        parts = []
                        size = 0
                        while queue and size < WRITE_BUDGET:
                            part = queue.popleft()
                            parts.append(part)
                            size += len(part)
                        self._bytes -= size
                        await send(b"".join(parts))
                    if self._socket is not None:
                        return  # drained: the next frame goes straight to the socket again
                else:
                    while queue:
                        part = queue.popleft()
                        self._bytes -= len(part)
                        await send(part)
                self._wakeup = loop.create_future()
                await self._wakeup
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer went away mid-send: only this connection ends
            log.info("send_failed", customer_id=self.customer_id, room=self.doc, error=repr(exc))
            self.abort(GOING_AWAY, "send failed")
        finally:
            if self._socket is not None and self._sender is asyncio.current_task():
                self._sender = None
