"""The persistence hook: rooms load from PostgreSQL (snapshot + log tail), every local update goes
to the group-commit log, `store` waits until the room's customer has nothing pending, and a room
whose log tail grows past COMPACT_AFTER_UPDATES is compacted off the hot path.

Always resolves the customer's database through the registry (a customer may live on a dedicated
database, and may move while its writes are held by `paused`).

Durable acknowledgements (a connection opened with `?ack=1`): each update message of such a
connection leaves a mark (the customer's log position once it was handled, the connection's count
of update messages); after the group commit that reaches that position the connection is sent a
control.DURABLE message with the count. An update that was held (it builds on structs the room does
not have) leaves no mark until it is applied; one that brought nothing new is durable with whatever
was appended before it. Content the room already had from another node is that node's to commit
(within its SYNC_COMMIT_WINDOW_MS): an acknowledgement covers what this node's log holds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog

from storage import documents
from storage.registry import DatabaseRegistry
from sync_server.extensions.doc_rebuild import Replay, merge
from sync_server.sync import control
from sync_server.sync.connection import Connection
from sync_server.sync.hooks import RoomHooks, is_remote
from sync_server.sync.rooms import Room

log = structlog.get_logger("sync_server.extensions.persistence")

LOAD_COMPACTION_DELAY = 1.0  # seconds a compaction due at load waits (at most the compaction interval)


@dataclass
class LogBacklog:
    """A room's uncompacted log rows (as far as this node knows) and when it was last compacted."""

    rows: int = 0
    bytes: int = 0
    compacted_at: float | None = None


@dataclass
class Loaded:
    """What a load replayed into the room's doc (the log rows by seq and their bytes, the
    snapshot's update_count then), handed to the compaction that follows it."""

    seqs: list[int]
    snapshot_count: int
    bytes: int


class Persistence(RoomHooks):
    def __init__(
        self,
        registry: DatabaseRegistry,
        update_log: documents.UpdateLog,
        *,
        compact_after: int,
        compact_after_bytes: int = 16 * 1024 * 1024,
        compact_interval: float = 5.0,
    ) -> None:
        self.registry = registry
        self.log = update_log
        self.compact_after = compact_after
        self.compact_after_bytes = compact_after_bytes
        # A compaction costs the size of the whole doc: at most one per room per interval, so a
        # burst into a big doc does not turn into quadratic work.
        self.compact_interval = compact_interval
        self._compacting: dict[tuple[str, str], asyncio.Task] = {}
        self._running: set[tuple[str, str]] = set()  # compactions past their wait, touching the database
        self.compactions = 0  # counted for the metrics extension
        self.compaction_failures = 0
        self.compacted_rows = 0
        # Durable acknowledgements waiting for a commit, per customer, in log order:
        # (log position, connection, its count of update messages).
        self._marks: dict[str, deque[tuple[int, Connection, int]]] = {}
        update_log.on_commit(self._committed)

    async def warm(self) -> None:
        """At start: the shared database's connections plan the load once (documents.warm)."""
        try:
            await documents.warm(self.registry.shared)
        except Exception:  # only a first load's speed depends on it
            log.exception("document_load_warm_failed")

    async def load(self, room: Room) -> None:
        db = await self.registry.for_customer(room.customer_id)
        # The log is replayed on a private doc, on the event loop in slices, one piece while
        # PostgreSQL reads the next, and that doc becomes the room's: no second encode and apply of
        # the whole state (22 ms at 100k rows). The peers waiting for the load are sent the doc as
        # it grows (Room.loading) and apply it meanwhile. (pycrdt.merge_updates over the tail was
        # superlinear: 20k updates took 8.7 s and 100k ran out of memory; see bench/RESULTS.md.)
        replay: Replay | None = None
        seqs: list[int] = []
        snapshot, snapshot_count, size = None, 0, 0
        async for piece in documents.load_pieces(db, room.customer_id, room.doc):
            if replay is None:
                snapshot, snapshot_count = piece.snapshot, piece.snapshot_count
                replay = Replay(snapshot)
            seqs += piece.seqs
            size += piece.size
            if piece.updates:
                await replay.absorb(piece.updates, room.loading)
        if seqs and replay is not None:
            room.ydoc = await replay.doc()
        elif snapshot:
            room.ydoc.apply_update(snapshot)
        backlog = room.state(LogBacklog)
        backlog.rows = len(seqs)
        backlog.bytes = size
        if self._due(room):
            # Compact on load: the doc just replayed is the new snapshot (no second read and replay).
            self._compact_soon(room, Loaded(seqs, snapshot_count, size))

    async def change(self, room: Room, update: bytes, origin: Any) -> None:
        if is_remote(origin):
            return  # the node that received it from its client writes it
        self.log.append(room.customer_id, room.doc, update)
        backlog = room.state(LogBacklog)
        backlog.rows += 1
        backlog.bytes += len(update)
        if self._due(room) and (room.customer_id, room.doc) not in self._compacting:
            self._compact_soon(room)
        session = getattr(origin, "session", None)
        if session is not None and session.acks:  # a held update of this connection applied at last
            self._mark(room, origin)

    async def received(self, room: Room, connection: Connection) -> None:
        self._mark(room, connection)

    # -- durable acknowledgements -----------------------------------------------------------------

    def _mark(self, room: Room, conn: Connection) -> None:
        session = conn.session
        if room.holds_from(conn) or session.received <= session.acked:
            return
        cid = room.customer_id
        position = self.log.position(cid)
        marks = self._marks.setdefault(cid, deque())
        if marks and marks[-1][0] == position and marks[-1][1] is conn:
            marks[-1] = (position, conn, session.received)  # the same log position: one mark
        else:
            marks.append((position, conn, session.received))
        if self.log.pending(cid) == 0:
            self._committed(cid, position)  # nothing of it waits for a commit (a duplicate, say)

    def _committed(self, customer_id: str, committed: int) -> None:
        marks = self._marks.get(customer_id)
        if not marks:
            return
        due: dict[Connection, int] = {}
        while marks and marks[0][0] <= committed:
            _, conn, count = marks.popleft()
            due[conn] = count
        if not marks:
            del self._marks[customer_id]
        for conn, count in due.items():
            session = conn.session
            if conn.close_code is None and count > session.acked:
                session.acked = count
                conn.enqueue(control.durable_frame(count))

    async def store(self, room: Room) -> None:
        await self.log.flush(room.customer_id)

    async def evict(self, room: Room) -> None:
        task = self._compacting.get((room.customer_id, room.doc))
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    # -- compaction -------------------------------------------------------------------------------

    def _due(self, room: Room) -> bool:
        """Compaction is due past COMPACT_AFTER_UPDATES rows or COMPACT_AFTER_BYTES bytes of log."""
        backlog = room.state(LogBacklog)
        return backlog.rows >= self.compact_after or backlog.bytes >= self.compact_after_bytes

    def _compact_soon(self, room: Room, loaded: Loaded | None = None) -> None:
        key = (room.customer_id, room.doc)
        if key in self._compacting or self.log.is_paused(room.customer_id):
            return
        task = asyncio.ensure_future(self._compact(room, loaded))
        self._compacting[key] = task
        task.add_done_callback(lambda _t: self._compacting.pop(key, None))

    async def _compact(self, room: Room, loaded: Loaded | None = None) -> None:
        try:
            backlog = room.state(LogBacklog)
            last = backlog.compacted_at
            now = asyncio.get_running_loop().time()
            if last is not None and now - last < self.compact_interval:
                await asyncio.sleep(self.compact_interval - (now - last))
            elif loaded is not None:
                # After the first sync of the peers that made the room load, not beside it: the
                # snapshot write and the delete of the loaded rows take PostgreSQL CPU (measured at
                # 100k rows: first sync 0.39 s median with the wait, 0.47 s without; bench/RESULTS.md).
                await asyncio.sleep(min(LOAD_COMPACTION_DELAY, self.compact_interval))
            backlog.compacted_at = asyncio.get_running_loop().time()
            self._running.add((room.customer_id, room.doc))
            # No flush first: compaction merges only committed rows, and must never wait on rows a
            # pause holds (paused() waits for running compactions).
            if self.log.is_paused(room.customer_id):
                return
            db = await self.registry.for_customer(room.customer_id)
            # The room's doc holds at least the loaded rows (and maybe later updates: harmless in a
            # snapshot, they are replayed again from the log idempotently); never read a doc the
            # engine failed on (it is being rebuilt): the ordinary compaction reads the log instead.
            if (
                loaded is not None
                and room.broken is None
                and await documents.compact_loaded(
                    db, room.customer_id, room.doc, loaded.seqs, loaded.snapshot_count, room.ydoc.get_update()
                )
            ):
                merged, merged_bytes = len(loaded.seqs), loaded.bytes
            else:
                merged, merged_bytes = await documents.compact(db, room.customer_id, room.doc, merge)
            backlog.rows = max(0, backlog.rows - merged)
            backlog.bytes = max(0, backlog.bytes - merged_bytes)
            self.compactions += 1
            self.compacted_rows += merged
            log.info("doc_compacted", customer_id=room.customer_id, room=room.doc, merged=merged)
        except Exception:
            self.compaction_failures += 1
            log.exception("doc_compaction_failed", customer_id=room.customer_id, room=room.doc)
        finally:
            self._running.discard((room.customer_id, room.doc))

    async def compactions_of(self, customer_id: str) -> None:
        """Wait for the customer's running compactions; cancel the ones still waiting to start."""
        tasks = []
        for key, task in list(self._compacting.items()):
            if key[0] != customer_id:
                continue
            if key not in self._running:
                task.cancel()
            tasks.append(task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    @asynccontextmanager
    async def paused(self, customer_id: str) -> AsyncIterator[None]:
        """Hold the customer's writes (see RoomRegistry.paused); running compactions finish first."""
        async with self.log.paused(customer_id):
            await self.compactions_of(customer_id)
            yield
