"""The document-change hook: announces that a document changed, at most once per document per
interval (the `document.updated` webhook; the composition root passes the announcing function).

A room's first local change after a quiet interval is announced at once; changes within the
interval after an announcement are gathered into one announcement at its end. Each announcement
waits until the changes it covers are durable (the group commit flushed the customer's updates)
and carries the state vector of the room's document at that moment. Updates from other nodes are
announced by the node that received them. At drain, pending announcements are made before the
node stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from sync_server.sync.hooks import RoomHooks, is_remote
from sync_server.sync.rooms import Room

log = structlog.get_logger("sync_server.extensions.document_changes")

# (customer_id, doc, state vector) -> True when announced, False when another node already did
# for this interval (the change then goes into the next announcement)
Announce = Callable[[str, str, bytes], Awaitable[bool]]
FORGET_AFTER = 10_000  # documents remembered before old announcement times are dropped


class DocumentChanges(RoomHooks):
    def __init__(
        self, announce: Announce, interval: float, flush: Callable[[str], Awaitable[None]] | None = None
    ) -> None:
        self.announce = announce
        self.interval = interval
        self.flush = flush  # UpdateLog.flush: returns once the customer's appended updates are committed
        self._pending: dict[tuple[str, str], asyncio.Task] = {}
        self._last: dict[tuple[str, str], float] = {}  # when each document was last announced (loop time)
        self._draining = asyncio.Event()  # set: announce what is pending without waiting, retry nothing
        self.announced = 0

    async def change(self, room: Room, update: bytes, origin: Any) -> None:
        if is_remote(origin):
            return
        key = (room.customer_id, room.doc)
        if key in self._pending:
            return  # the pending announcement will cover this change (it reads the state when it runs)
        now = asyncio.get_running_loop().time()
        delay = max(0.0, self._last.get(key, -self.interval) + self.interval - now)
        self._pending[key] = asyncio.ensure_future(self._announce_after(room, key, delay))
        if len(self._last) > FORGET_AFTER:
            self._forget(now)

    async def _announce_after(self, room: Room, key: tuple[str, str], delay: float) -> None:
        again = False
        try:
            if delay and not self._draining.is_set():
                try:
                    await asyncio.wait_for(self._draining.wait(), delay)
                except TimeoutError:
                    pass
            if self.flush is not None:
                await self.flush(room.customer_id)
            # from here on, a change schedules the next announcement (this one may miss it)
            self._pending.pop(key, None)
            self._last[key] = asyncio.get_running_loop().time()
            done = await self.announce(room.customer_id, room.doc, room.ydoc.get_state())
            self.announced += done
            again = not done
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("document_change_announce_failed", customer_id=room.customer_id, room=room.doc)
            again = True
        finally:
            if self._pending.get(key) is asyncio.current_task():
                self._pending.pop(key, None)
        if again and key not in self._pending and not self._draining.is_set():  # try again in an interval
            self._last[key] = asyncio.get_running_loop().time()
            self._pending[key] = asyncio.ensure_future(self._announce_after(room, key, self.interval))

    def _forget(self, now: float) -> None:
        for key in [k for k, t in self._last.items() if now - t > self.interval and k not in self._pending]:
            del self._last[key]

    async def drain(self) -> None:
        """Make the pending announcements now (at shutdown)."""
        self._draining.set()
        while self._pending:
            tasks = list(self._pending.values())
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        await asyncio.gather(*self._pending.values(), return_exceptions=True)
        self._pending.clear()
