"""What the node reads from websockets before the sync core has handled it: a node-wide budget of
bytes of frames being received and applied, the hard frame limit applied while a frame arrives, and
websocket ping/pong as a sign of life (issue 15).

Hypercorn reads a socket, hands the bytes to wsproto and collects each message in a buffer until it
is complete; only then does the endpoint see it. A patch of that step
(sync_server.node.patches `websocket_intake`) asks the connection's `Intake` first:

- every chunk of a message is counted in the node's `FrameBudget` until the endpoint has applied
  the message (`Intake.done`). A message past `SMALL` bytes waits while the budget is spent, and
  while it waits Hypercorn does not read that socket: the client's upload slows down to what the
  node can apply (TCP backpressure) instead of being refused. One large message at a time (the
  oldest to start) may go past the budget, so any number of uploads larger than the budget still
  all finish, one after the other; small frames (live edits, awareness) never wait. Bytes held: the
  budget + one frame of at most the hard limit + `SMALL` per connection.
- a message that passes the hard limit stops being buffered at that point; the endpoint is told
  (`{"type": "websocket.receive", "too_big": n}`) and refuses it with a reason, and the rest of that
  message is read and dropped.
- Ping and Pong frames mark the connection alive (`Connection.last_seen`), so a client that only
  answers the server's pings is never taken for a dead peer; so do the chunks of a large frame
  still arriving (a 24 MB day over a slow mobile link takes minutes, and is not idle).

Known limit: a client that sends most of a large frame and then trickles the rest holds its share
of the budget for as long as it trickles; other large frames wait meanwhile (live edits do not).

Without the patch (a Hypercorn whose internals changed) Hypercorn's own limit (set to the same
hard limit) applies and there is no budget: the server works, refusals then carry no reason.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

SMALL = 64 * 1024  # a message up to this size never waits for the budget


class FrameBudget:
    """Bytes of websocket frames received and not yet applied, node-wide."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._large: dict[Intake, None] = {}  # intakes with a large message arriving, oldest first
        self._waiters: deque[asyncio.Future] = deque()
        self.waits = 0  # times a socket stopped being read for the budget (operator counter)

    def _may(self, intake: Intake, n: int) -> bool:
        if self.used + n <= self.limit:
            return True
        # the oldest large message may pass the budget once what the others hold fits in it
        return next(iter(self._large), None) is intake and self.used - intake.held <= self.limit

    async def acquire(self, intake: Intake, n: int, buffered: int) -> None:
        """Count `n` more bytes of the message `intake` is receiving (`buffered` so far); waits
        while the budget is spent, unless the message is still small."""
        if buffered + n > SMALL:
            if intake not in self._large:
                self._large[intake] = None
            if not self._may(intake, n):
                self.waits += 1
                while not intake.closed and not self._may(intake, n):
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if not waiter.done():
                            waiter.cancel()
        if intake.closed:
            return  # the connection ended while this waited: close() released what it held
        self._add(intake, n)

    def _add(self, intake: Intake, n: int) -> None:
        intake.held += n
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def finished(self, intake: Intake) -> None:
        """The message `intake` was receiving is complete (or dropped): it no longer reads."""
        if self._large.pop(intake, 0) is None:
            self._wake()

    def release(self, intake: Intake, n: int) -> None:
        n = min(n, intake.held)
        if n <= 0:
            return
        intake.held -= n
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def status(self) -> dict[str, int]:
        return {"limit": self.limit, "used": self.used, "peak": self.peak, "waits": self.waits}


class Intake:
    """One websocket's side of the budget and its hard frame limit (installed on Hypercorn's stream
    by the endpoint through sync_server.sync.wire.install_intake, read by the node's patch)."""

    __slots__ = ("budget", "limit", "held", "closed", "refusing", "conn", "_sizes", "_current", "__weakref__")

    def __init__(self, budget: FrameBudget, limit: int) -> None:
        self.budget = budget
        self.limit = limit
        self.held = 0  # bytes counted in the budget: complete messages not yet applied + the current one
        self.closed = False
        self.refusing = False  # dropping the rest of a message past the limit
        self.conn: Any = None  # the Connection once joined (its last_seen follows pings and pongs)
        self._sizes: list[int] = []  # complete messages handed to the endpoint, not yet done (a few)
        self._current = 0  # bytes of the message being received

    # -- called by the patched Hypercorn stream ---------------------------------------------------

    async def chunk(self, n: int, buffered: int) -> bool:
        """A chunk of `n` bytes of a message with `buffered` bytes so far: False when the message
        passes the hard limit (the caller drops what it buffered and tells the endpoint)."""
        taken = self.take(n, buffered)
        if taken is not None:
            return taken
        await self.budget.acquire(self, n, buffered)
        self._counted(n, buffered)
        return True

    def take(self, n: int, buffered: int) -> bool | None:
        """`chunk` without waiting (sync.transport): None when the chunk must wait for the budget
        (then the caller awaits `chunk` with the same arguments)."""
        if self.refuses(n, buffered):
            return False
        budget = self.budget
        if buffered + n > SMALL:
            if self not in budget._large:
                budget._large[self] = None
            if not budget._may(self, n):
                return None
        budget._add(self, n)
        self._counted(n, buffered)
        return True

    def refuses(self, n: int, buffered: int) -> bool:
        """Whether a message of `buffered` bytes so far passes the hard limit with `n` more (bytes
        arrived, or declared by a frame's header); if so it leaves the frame budget (the caller
        drops what it buffered and tells the endpoint)."""
        if buffered + n <= self.limit:
            return False
        self.budget.release(self, self._current)
        self._current = 0
        self.budget.finished(self)
        return True

    def _counted(self, n: int, buffered: int) -> None:
        self._current += n
        if buffered:  # a large frame still arriving is activity: a slow link's upload is not idle
            self.alive()

    def complete(self) -> None:
        """The message is complete and handed to the endpoint."""
        self._sizes.append(self._current)
        self._current = 0
        self.budget.finished(self)

    def alive(self) -> None:
        """A ping or pong arrived."""
        conn = self.conn
        if conn is not None:
            conn.last_seen = asyncio.get_running_loop().time()

    # -- called by the endpoint -------------------------------------------------------------------

    def done(self) -> None:
        """The endpoint handled the oldest message it received: its bytes leave the budget."""
        if self._sizes:
            self.budget.release(self, self._sizes.pop(0))

    def close(self) -> None:
        """The connection ended: everything it still holds leaves the budget."""
        self.closed = True
        self._sizes.clear()
        self._current = 0
        self.budget.finished(self)
        self.budget.release(self, self.held)
        self.budget._wake()
