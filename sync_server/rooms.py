"""Rooms: one in-memory Yjs document per (customer, doc) with the peers editing it, and the registry
that loads each room exactly once, evicts it only when idle, empty and durable, and can pause a
customer's writes while it moves to another database.

Per update the hot path is: decode once, apply to the doc (Rust), queue the same frame bytes to
every peer (the sender included, as y-websocket does), hand the update to the change hooks (the
persistence hook appends it to the group-commit log). No database round trip on that path.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import pycrdt
import structlog

from . import protocol
from .connection import FORBIDDEN, GOING_AWAY, Connection
from .hooks import HTTP, REMOTE, HookList
from .wire import binary_frame

log = structlog.get_logger("sync_server.rooms")

# Awareness is keyed by client ids the peers choose. A y-websocket client introduces one per document
# instance; without these bounds one peer could fill a room with millions of made-up ids (1,024 per
# frame) and keep the room, and that memory, alive for good.
MAX_AWARENESS_CLIENTS_PER_PEER = 256  # more from one connection is malformed (closed 4400)
MAX_AWARENESS_REMOVED = 10_000  # clocks of removed clients kept per room; the oldest are forgotten


class Room:
    """The doc of one (customer, doc) and its peers. Lives on the event loop (pycrdt Doc is not
    thread-safe); every method is called from the loop."""

    def __init__(self, customer_id: str, doc: str, hooks: HookList) -> None:
        self.customer_id = customer_id
        self.doc = doc
        self.ydoc = pycrdt.Doc()
        self.connections: set[Connection] = set()
        self.hooks = hooks
        self.version = 0  # bumped by every applied update (eviction checks nothing arrived)
        self.log_length = 0  # rows of this doc in the update log not yet compacted (persistence)
        self.extra: dict[str, Any] = {}  # per-room state of hooks, keyed by hook name
        # awareness: client id -> (clock, JSON state or None once removed); clocks kept after removal
        self._awareness: dict[int, tuple[int, str | None]] = {}
        self._forget_at = MAX_AWARENESS_REMOVED  # size of _awareness that triggers _forget_removed
        self._evict_task: asyncio.Task | None = None

    @property
    def name(self) -> str:
        return f"{self.customer_id}/{self.doc}"

    def __repr__(self) -> str:
        return f"Room({self.name}, peers={len(self.connections)})"

    # -- peers ------------------------------------------------------------------------------------

    def join(self, conn: Connection) -> None:
        """Queue sync step 1 and the current presence of everybody to the new peer at once."""
        if self._evict_task is not None:
            self._evict_task.cancel()
            self._evict_task = None
        conn.room = self
        self.connections.add(conn)
        conn.enqueue(protocol.step1_frame(self.ydoc.get_state()))
        present = [(c, clock, s) for c, (clock, s) in self._awareness.items() if s is not None]
        if present:
            conn.enqueue(protocol.awareness_frame(present))

    def leave(self, conn: Connection) -> None:
        """Remove the peer and broadcast the removal of every presence it introduced."""
        self.connections.discard(conn)
        gone = []
        for client in conn.awareness_ids:
            entry = self._awareness.get(client)
            if entry is not None and entry[1] is not None:
                clock = entry[0] + 1
                self._awareness[client] = (clock, None)
                gone.append((client, clock, None))
        conn.awareness_ids.clear()
        if gone:
            frame = protocol.awareness_frame(gone)
            self.broadcast(frame)
            asyncio.ensure_future(self.hooks.awareness(self, frame, conn))

    def broadcast(self, frame: bytes) -> None:
        """Queue one message to every peer; the websocket frame is encoded once for all of them."""
        wire = None
        for conn in tuple(self.connections):
            if conn.raw and wire is None:
                wire = binary_frame(frame)
            conn.enqueue(frame, wire)

    # -- messages ---------------------------------------------------------------------------------

    async def receive(self, conn: Connection, frame: bytes) -> None:
        """Handle one frame of a peer. Raises protocol.Malformed (the endpoint closes it 4400)."""
        msg = protocol.decode(frame)
        kind = type(msg)
        if kind is protocol.SyncUpdate:
            if not conn.can_write:
                if not conn.denied_sent:  # tell a read-only client once, as the protocol allows
                    conn.denied_sent = True
                    conn.enqueue(protocol.permission_denied_frame("read-only access: updates are ignored"))
                return
            await self._apply(msg.update, msg.frame, conn)
        elif kind is protocol.SyncStep1:
            try:
                diff = self.ydoc.get_update(msg.state_vector)
            except ValueError:
                raise protocol.Malformed("invalid state vector") from None
            conn.enqueue(protocol.step2_frame(diff))
        elif kind is protocol.AwarenessUpdate:
            if self._apply_awareness(msg.entries, conn):
                self.broadcast(msg.frame)
                await self.hooks.awareness(self, msg.frame, conn)
        elif kind is protocol.QueryAwareness:
            present = [(c, clock, s) for c, (clock, s) in self._awareness.items() if s is not None]
            conn.enqueue(protocol.awareness_frame(present))
        # Unknown message types are ignored, as y-websocket does.

    async def apply(self, update: bytes, origin: Any = HTTP) -> None:
        """Apply an update from outside a websocket (HTTP API): relayed, persisted, hooks called."""
        await self._apply(update, protocol.update_frame(update), origin)

    async def apply_remote(self, update: bytes) -> None:
        """An update from another node: applied and relayed to local peers; hooks see origin REMOTE
        (fan-out does not re-publish it, persistence leaves it to the node that received it)."""
        await self._apply(update, protocol.update_frame(update), REMOTE)

    async def apply_remote_awareness(self, frame: bytes) -> None:
        """An awareness frame from another node: validated, applied, relayed locally."""
        msg = protocol.decode(frame)
        if isinstance(msg, protocol.AwarenessUpdate) and self._apply_awareness(msg.entries, None):
            self.broadcast(msg.frame)
            await self.hooks.awareness(self, msg.frame, REMOTE)

    async def _apply(self, update: bytes, frame: bytes, origin: Any) -> None:
        if update == protocol.EMPTY_UPDATE:
            return
        try:
            self.ydoc.apply_update(update)
        except ValueError as exc:
            raise protocol.Malformed(f"invalid update: {exc}") from None
        self.version += 1
        self.broadcast(frame)
        await self.hooks.change(self, update, origin)

    def _apply_awareness(self, entries, conn: Connection | None) -> bool:
        """y-protocols' rule: a newer clock wins; an equal clock may only remove. True if any applied."""
        states = self._awareness
        if conn is not None:
            ids = conn.awareness_ids
            new = {client for client, _clock, state in entries if state is not None and client not in ids}
            if new and len(ids) + len(new) > MAX_AWARENESS_CLIENTS_PER_PEER:
                raise protocol.Malformed(f"more than {MAX_AWARENESS_CLIENTS_PER_PEER} awareness clients on one "
                                         "connection")
        changed = False
        for client, clock, state in entries:
            current = states.get(client)
            if current is None or current[0] < clock or (current[0] == clock and state is None
                                                         and current[1] is not None):
                states[client] = (clock, state)
                changed = True
                if conn is not None:
                    if state is None:
                        conn.awareness_ids.discard(client)
                    else:
                        conn.awareness_ids.add(client)
        if len(states) > self._forget_at:
            self._forget_removed()
        return changed

    def _forget_removed(self) -> None:
        """Forget the oldest clocks of removed clients beyond MAX_AWARENESS_REMOVED / 2 (they only
        guard against a stale update bringing a removed client back). Runs again only after as many
        new entries: amortized O(1) per entry, and the room holds at most the present clients (at
        most MAX_AWARENESS_CLIENTS_PER_PEER per connection) plus MAX_AWARENESS_REMOVED."""
        states = self._awareness
        removed = [client for client, (_clock, state) in states.items() if state is None]
        for client in removed[:max(0, len(removed) - MAX_AWARENESS_REMOVED // 2)]:
            del states[client]
        self._forget_at = len(states) + MAX_AWARENESS_REMOVED // 2

    @property
    def presence(self) -> dict[int, str]:
        """Awareness client id -> JSON state of everybody present."""
        return {c: s for c, (_, s) in self._awareness.items() if s is not None}

    def awareness_entries(self, clients=None) -> list[tuple[int, int, str | None]]:
        """(client id, clock, state) of everybody present, or only of `clients` (present or removed):
        what another node needs to rebuild this room's presence (cross-node fan-out)."""
        if clients is None:
            return [(c, clock, s) for c, (clock, s) in self._awareness.items() if s is not None]
        return [(c, *self._awareness[c]) for c in clients if c in self._awareness]


class RoomRegistry:
    """Every loaded room of this node, keyed by (customer id, doc)."""

    def __init__(self, *, evict_after: float, spawn: Callable[[Awaitable[None], str], asyncio.Task] | None = None
                 ) -> None:
        self.hooks = HookList()
        self.evict_after = evict_after
        self.accepting = True
        self._rooms: dict[tuple[str, str], Room] = {}
        self._loading: dict[tuple[str, str], asyncio.Future] = {}
        self._spawn = spawn or (lambda coro, name: asyncio.ensure_future(coro))
        self._pausers: list[Callable[[str], Any]] = []  # async context managers (persistence)

    # -- lookup and loading -------------------------------------------------------------------------

    def peek(self, customer_id: str, doc: str) -> Room | None:
        return self._rooms.get((str(customer_id), doc))

    def rooms(self, customer_id: str | None = None) -> list[Room]:
        if customer_id is None:
            return list(self._rooms.values())
        cid = str(customer_id)
        return [r for (c, _), r in self._rooms.items() if c == cid]

    async def get(self, customer_id: str, doc: str) -> Room:
        """The loaded room; loads it once however many callers ask at the same instant.
        Returns without suspending when the room is already loaded."""
        key = (str(customer_id), doc)
        room = self._rooms.get(key)
        if room is not None:
            return room
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[key] = pending
            self._spawn(self._load(key, pending), f"load-room:{key[0]}/{doc}")
        return await asyncio.shield(pending)

    async def _load(self, key: tuple[str, str], pending: asyncio.Future) -> None:
        room = Room(key[0], key[1], self.hooks)
        try:
            await self.hooks.load(room)
        except BaseException as exc:
            log.exception("room_load_failed", customer_id=key[0], room=key[1])
            self._loading.pop(key, None)
            if not pending.done():
                pending.set_exception(exc if isinstance(exc, Exception) else RuntimeError("load cancelled"))
                pending.exception()  # retrieved: waiters may all be gone
            if not isinstance(exc, Exception):
                raise
            return
        self._rooms[key] = room
        self._loading.pop(key, None)
        pending.set_result(room)
        self._schedule_eviction(room)  # no peer yet (HTTP load): evicted unless somebody joins
        log.info("room_loaded", customer_id=key[0], room=key[1])

    # -- peers ------------------------------------------------------------------------------------

    def join(self, room: Room, conn: Connection) -> None:
        room.join(conn)

    def leave(self, room: Room, conn: Connection) -> None:
        room.leave(conn)
        if not room.connections:
            self._schedule_eviction(room)

    # -- eviction ---------------------------------------------------------------------------------

    def _schedule_eviction(self, room: Room) -> None:
        if room._evict_task is None and self._rooms.get((room.customer_id, room.doc)) is room:
            room._evict_task = self._spawn(self._evict_when_idle(room), f"evict:{room.name}")

    async def _evict_when_idle(self, room: Room) -> None:
        try:
            await asyncio.sleep(self.evict_after)
            while True:
                if room.connections:
                    return
                version = room.version
                await room.hooks.store(room)  # durable first; errors keep the room in memory
                if room.connections:
                    return
                if room.version == version:
                    break  # nothing arrived while storing: everything it holds is durable
            # No await between the check above and forgetting the room.
            key = (room.customer_id, room.doc)
            if self._rooms.get(key) is room:
                del self._rooms[key]
            room._evict_task = None
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("room_evict_failed", customer_id=room.customer_id, room=room.doc)
            room._evict_task = None
            if not room.connections:
                await asyncio.sleep(min(self.evict_after, 5.0))
                self._schedule_eviction(room)
            return
        await room.hooks.evict(room)
        log.info("room_evicted", customer_id=room.customer_id, room=room.doc)

    # -- customers --------------------------------------------------------------------------------

    def add_pauser(self, pauser: Callable[[str], Any]) -> None:
        """Register `pauser(customer_id)` -> async context manager that holds that customer's writes
        (the persistence hook registers its own)."""
        self._pausers.append(pauser)

    @asynccontextmanager
    async def paused(self, customer_id: str) -> AsyncIterator[None]:
        """Flush every pending write of the customer's rooms to its current database, then hold
        (buffer, never drop) its writes while inside; peers stay connected and keep editing.
        On exit the held writes go to whatever database `registry.for_customer` resolves then."""
        cid = str(customer_id)
        async with _nested([p(cid) for p in self._pausers]):
            yield

    def close_customer_nowait(self, customer_id: str, code: int = FORBIDDEN, reason: str = "customer suspended"
                              ) -> int:
        closed = 0
        for room in self.rooms(customer_id):
            for conn in tuple(room.connections):
                conn.abort(code, reason)
                closed += 1
        return closed

    async def close_customer(self, customer_id: str, code: int = FORBIDDEN, reason: str = "customer suspended"
                             ) -> int:
        """Close every connection of the customer (e.g. suspended: 4403, clients stop retrying)."""
        closed = self.close_customer_nowait(customer_id, code, reason)
        log.info("customer_connections_closed", customer_id=str(customer_id), connections=closed, code=code)
        return closed

    def close_idle(self, timeout: float) -> int:
        """Close (1001) every connection that sent nothing for `timeout` seconds."""
        cutoff = asyncio.get_running_loop().time() - timeout
        closed = 0
        for room in self.rooms():
            for conn in tuple(room.connections):
                if conn.last_seen < cutoff:
                    conn.abort(GOING_AWAY, "idle timeout")
                    closed += 1
        return closed

    async def drain(self) -> None:
        """Shutdown: stop accepting, make every room durable, close every peer with 1001."""
        self.accepting = False
        for room in self.rooms():
            try:
                await room.hooks.store(room)
            except Exception:
                log.exception("room_store_failed", customer_id=room.customer_id, room=room.doc)
        for room in self.rooms():
            for conn in tuple(room.connections):
                conn.abort(GOING_AWAY, "server shutting down")


@asynccontextmanager
async def _nested(managers: list) -> AsyncIterator[None]:
    if not managers:
        yield
        return
    async with managers[0]:
        async with _nested(managers[1:]):
            yield
