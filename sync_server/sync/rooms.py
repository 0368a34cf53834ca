"""Rooms: one in-memory Yjs document per (customer, doc) with the peers editing it, and the registry
that loads each room exactly once, evicts it only when idle, empty and durable, and can pause a
customer's writes while it moves to another database.

Per update the hot path is: decode once, apply to the doc (Rust), queue the same frame bytes to
every peer (the sender included, as y-websocket does), hand the update to the change hooks (the
persistence hook appends it to the group-commit log). No database round trip on that path.

Before an update reaches yrs the room reads its struct sections (sync_server.sync.yjs_update) against
what the doc has of each client: an update that brings nothing new (a duplicate, an echo of what
the room sent, an empty update followed by junk) is neither stored nor relayed; one with a gap is
held until what it builds on arrives; one up to WALK_BYTES long must end exactly where its delete
set ends (yrs ignores trailing bytes: they would be stored and relayed). (Asking yrs for each
transaction's effect through Doc.observe costs more than the apply itself on large docs: +26 us an
update on a 20,000-character text.)

The CRDT engine is native code fed by untrusted bytes. Some malformed updates make yrs panic
midway (pycrdt raises pyo3's PanicException, a BaseException) and leave the partly integrated update
in the doc, where later operations segfault or spin. So any failure of the engine on a room's doc
breaks that room: nothing more is read from or written to that doc; the registry flushes what the
room already made durable-bound, loads a fresh room from PostgreSQL and moves the peers over (each
gets the fresh state's sync step 1 and answers with whatever it holds that the fresh room lacks).
The sender of the update is closed with 4400; the update is never stored or relayed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pycrdt
import structlog

from sync_server.sync import doc_reads, protocol, yjs_update
from sync_server.sync.connection import (
    FORBIDDEN,
    GOING_AWAY,
    INTERNAL_ERROR,
    UNAUTHORIZED,
    Connection,
)
from sync_server.sync.faults import LET_THROUGH
from sync_server.sync.hooks import HTTP, REMOTE, SERVER, HookList
from sync_server.sync.wire import binary_frame

log = structlog.get_logger("sync_server.sync.rooms")
T = TypeVar("T")

# Awareness is keyed by client ids the peers choose. A y-websocket client introduces one per document
# instance; without these bounds one peer could fill a room with millions of made-up ids (1,024 per
# frame) and keep the room, and that memory, alive for good.
MAX_AWARENESS_CLIENTS_PER_PEER = 256  # more from one connection is malformed (closed 4400)
MAX_AWARENESS_REMOVED = 10_000  # clocks of removed clients kept per room; the oldest are forgotten
# The server's own awareness client id in every room (materialization feedback in track rooms): the
# largest id lib0 reads (Yjs clients pick 32-bit ids), ignored from connections. Renewed like a
# client's state (y-protocols drops a remote state not renewed for 30 s).
SERVER_AWARENESS_ID = protocol.MAX_SAFE_INTEGER
SERVER_AWARENESS_RENEW = 15.0
ECHO_ENTRIES = 64
HELD_UPDATES, HELD_BYTES = 256, 8 * 1024 * 1024  # per room: updates waiting for missing structs
WALK_BYTES = 64 * 1024  # updates up to this size are read to the end (exact length, every clock)
_APPLY, _HOLD, _DROP = object(), object(), object()  # verdicts of Room._examine
EMPTY_STATE = b"\x00"  # the state vector of an empty doc


def warm_engine() -> None:
    """Make one Doc on the running loop at start: pycrdt's first Doc there imports anyio's asyncio
    backend (its transaction lock), 10-25 ms that would otherwise fall in the first room's load."""
    pycrdt.Doc()


class Rejected(protocol.Malformed):
    """The CRDT engine failed on an update (a native panic or an invalid result): the update is
    refused like a malformed frame (4400 on a websocket, 422 on HTTP) and the room is rebuilt."""


class Preview:
    """The peers waiting for a room's load that are sent its doc as the load builds it
    (Room.loading); each keeps the state vector it was sent (`Connection.previewed`), and its sync
    step 1 is answered with only what that leaves out. A y-websocket peer applies an update at any
    time, so it applies the doc while the server still replays it instead of after."""

    __slots__ = ("peers", "state", "open")

    def __init__(self) -> None:
        self.peers: list[Connection] = []
        self.state = EMPTY_STATE  # what every peer in `peers` was sent so far
        self.open = True  # nothing sent yet: a peer that starts waiting now misses nothing


class Room:
    """The doc of one (customer, doc) and its peers. Lives on the event loop (pycrdt Doc is not
    thread-safe); every method is called from the loop."""

    def __init__(self, customer_id: str, doc: str, hooks: HookList) -> None:
        self.customer_id = customer_id
        self.doc = doc
        self.ydoc: pycrdt.Doc = pycrdt.Doc()
        self.connections: dict[Connection, None] = {}  # join order (a broadcast goes out in it)
        self.hooks = hooks
        self.version = 0  # bumped by every applied update (eviction checks nothing arrived)
        self._step1: tuple[int, bytes] = (-1, b"")  # (version, sync step 1 of the doc at that version)
        self._states: dict[type, Any] = {}  # each extension's own state of this room, by its type
        # awareness: client id -> (clock, JSON state or None once removed); clocks kept after removal
        self._awareness: dict[int, tuple[int, str | None]] = {}
        self._forget_at = MAX_AWARENESS_REMOVED  # size of _awareness that triggers _forget_removed
        self._evict_task: asyncio.Task | None = None
        self._relayed: dict[int, None] = {}  # hashes of updates relayed lately, oldest first (echoes)
        self._clocks: dict[int, int] | None = None  # client -> clock the doc has, read lazily
        self._held: list[tuple[bytes, Any]] = []  # updates waiting for structs they build on
        self._held_bytes = 0
        self._releasing = False
        self._server_renewed = 0.0  # loop time the server's awareness state was last published here
        # Set when the engine failed on this doc: the registry's replacement room (a future of it).
        self.broken: asyncio.Future | None = None
        self.on_broken: Callable[[Room], asyncio.Future] | None = None  # set by the registry
        self._preview: Preview | None = None  # while it loads: the peers sent the doc so far

    def state(self, kind: type[T]) -> T:
        """This room's state of one extension, an instance of `kind` (made with `kind()` on first
        use): typed, owned by the extension that defines `kind`, invisible to the core."""
        value = self._states.get(kind)
        if value is None:
            value = self._states[kind] = kind()
        return value

    def set_state(self, value: Any) -> None:
        self._states[type(value)] = value

    def pop_state(self, kind: type[T]) -> T | None:
        return self._states.pop(kind, None)

    def peek_state(self, kind: type[T]) -> T | None:
        return self._states.get(kind)

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
        self.connections[conn] = None
        version, step1 = self._step1
        if version != self.version:  # encoded once per version: a join storm shares it
            step1 = protocol.step1_frame(doc_reads.state(self.ydoc))
            self._step1 = (self.version, step1)
        conn.enqueue(step1)
        present = [(c, clock, s) for c, (clock, s) in self._awareness.items() if s is not None]
        if present:
            conn.enqueue(protocol.awareness_frame(present))

    def expect(self, conn: Connection) -> None:
        """`conn` waits for this room's load: it is sent the doc as the load builds it (`loading`),
        unless some of it went out already."""
        preview = self._preview
        if preview is None:
            preview = self._preview = Preview()
        if preview.open:
            preview.peers.append(conn)

    def loading(self, doc: pycrdt.Doc) -> None:
        """A load hook's doc as built so far (the doc the room adopts, or one it will hold all of):
        the peers waiting for the load are sent what it holds beyond the last such update, as an
        update. A peer with frames waiting already (it does not keep up) gets no more of these; its
        sync step 1 is answered with the rest."""
        preview = self._preview
        if preview is None or not preview.peers:
            return
        diff = doc.get_update(preview.state)
        if diff == protocol.EMPTY_UPDATE:
            return
        preview.open = False
        preview.state = state = doc.get_state()
        frame = protocol.update_frame(diff)
        wire = binary_frame(frame)
        keeping = []
        for conn in preview.peers:
            if conn.takes_now():
                conn.enqueue(frame, wire)
                conn.previewed = (self, state)
                keeping.append(conn)
        preview.peers = keeping

    def loaded(self) -> None:
        """The load is over: no more previews (each peer keeps what it was sent for its step 1)."""
        self._preview = None

    def leave(self, conn: Connection) -> None:
        """Remove the peer and broadcast the removal of every presence it introduced."""
        self.connections.pop(conn, None)
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
        if self.broken is not None:  # being rebuilt: the frame goes to the fresh room
            await (await asyncio.shield(self.broken)).receive(conn, frame)
            return
        msg: Any = protocol.decode(
            frame
        )  # Any: dispatched on type(msg) (cheaper than isinstance; mypy does not narrow it)
        kind = type(msg)
        if kind is protocol.SyncUpdate:
            if not conn.can_write:
                if not conn.denied_sent:  # tell a read-only client once, as the protocol allows
                    conn.denied_sent = True
                    conn.enqueue(protocol.permission_denied_frame("read-only access: updates are ignored"))
                return
            session = conn.session
            if session is not None and session.acks:  # opted in to durable acknowledgements
                session.received += 1
                await self._apply(msg.update, msg.frame, conn)
                await self.hooks.received(self, conn)
            else:
                await self._apply(msg.update, msg.frame, conn)
        elif kind is protocol.SyncStep1:
            state_vector = msg.state_vector
            previewed = conn.previewed
            if previewed is not None:  # sent this room's doc while it loaded: it has that much already
                conn.previewed = None
                if previewed[0] is self:
                    state_vector = yjs_update.covering(state_vector, previewed[1])
            try:
                diff = doc_reads.update_since(self.ydoc, state_vector)
            except ValueError:
                raise protocol.Malformed("invalid state vector") from None
            except LET_THROUGH:
                raise
            except BaseException as exc:
                self._break(exc, "sync step 1")
                raise Rejected("the document could not answer this state vector") from None
            conn.enqueue(protocol.step2_frame(diff))
        elif kind is protocol.AwarenessUpdate:
            entries, frame = msg.entries, msg.frame
            if any(client == SERVER_AWARENESS_ID for client, _clock, _state in entries):
                # y-websocket clients relay every awareness change they see, the server's included
                # (and its removal when they time it out): never applied from a peer, never relayed.
                entries = tuple(e for e in entries if e[0] != SERVER_AWARENESS_ID)
                if not entries:
                    return
                frame = protocol.awareness_frame(entries)
            if self._apply_awareness(entries, conn):
                self.broadcast(frame)
                await self.hooks.awareness(self, frame, conn)
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
        msg: Any = protocol.decode(
            frame
        )  # Any: dispatched on type(msg) (cheaper than isinstance; mypy does not narrow it)
        if isinstance(msg, protocol.AwarenessUpdate) and self._apply_awareness(msg.entries, None):
            self.broadcast(msg.frame)
            await self.hooks.awareness(self, msg.frame, REMOTE)

    async def _apply(self, update: bytes, frame: bytes, origin: Any) -> None:
        if self.broken is not None:
            await (await asyncio.shield(self.broken))._apply(update, frame, origin)
            return
        if update == protocol.EMPTY_UPDATE:
            return
        # _examine reads the leading section count itself and yjs_update.summarize bounds it by the
        # bytes left before yrs sees the update (websocket frames were checked by protocol.decode).
        verdict, summary = self._examine(update)
        if verdict is _DROP:
            return  # nothing new: a duplicate, an echo of what the room sent, an empty update + junk
        if verdict is _HOLD:
            # Structs past what the doc has of their client (yrs would integrate them wrongly, see
            # yjs_update): held until the missing ones arrive, as Yjs keeps them pending. Over HTTP
            # the caller is told at once instead.
            if origin is HTTP:
                raise protocol.Malformed("update depends on changes the document does not have")
            self._hold(update, origin)
            return
        await self._integrate(update, frame, origin, summary)
        if self._held:
            await self._release()

    def _examine(self, update: bytes) -> tuple[object, Any]:
        """(_APPLY | _HOLD | _DROP, what to advance the clock map by). The hot path (a live edit:
        one section starting exactly at the clock the room has of its client) reads four numbers;
        anything else is walked (yjs_update.summarize)."""
        clocks = self._clock_map()
        sections, pos = protocol.read_var_uint(update, 0)
        if sections == 0:
            deleting, _ = protocol.read_var_uint(update, pos)
            if deleting == 0 or hash(update) in self._relayed:
                return _DROP, None
            if len(update) <= WALK_BYTES:  # deletions only: dropped when the doc has made them all
                summary = yjs_update.summarize(update, walk_all=True)
                if self._deletes_known(update, summary):
                    return _DROP, None
            return _APPLY, None  # deletions only: yrs decides
        if sections == 1:
            _structs, pos = protocol.read_var_uint(update, pos)
            client, pos = protocol.read_var_uint(update, pos)
            start, _ = protocol.read_var_uint(update, pos)
            have = clocks.get(client, 0)
            if start > have:  # the map may be behind the doc (it holds lower bounds): read it again
                clocks = self._clocks = yjs_update.state(doc_reads.state(self.ydoc))
                have = clocks.get(client, 0)
                if start > have:
                    return _HOLD, None
            if start == have:
                return _APPLY, (client, start + 1)  # at least one clock further; exact for one item
        summary = yjs_update.summarize(update, walk_all=len(update) <= WALK_BYTES)
        if any(end is None or end > clocks.get(client, 0) for client, _, end in summary.sections):
            clocks = self._clocks = yjs_update.state(doc_reads.state(self.ydoc))  # lower bounds: make exact
        if any(start > clocks.get(client, 0) for client, start, _ in summary.sections):
            return _HOLD, None
        if all(end is not None and end <= clocks.get(client, 0) for client, _, end in summary.sections) and (
            summary.deleting == 0 or hash(update) in self._relayed or self._deletes_known(update, summary)
        ):
            return _DROP, None
        return _APPLY, summary

    def _deletes_known(self, update: bytes, summary: Any) -> bool:
        """An update whose structs the doc has and whose deletions it has made already (an echo
        re-encoded, so not among the relayed hashes): same state vector, same delete set. Compared
        with the doc's delete set as yrs encodes it (an update without structs), no second Doc."""
        if summary.deleting is None:
            return False  # a large update not read to its delete set: yrs decides
        try:
            known = self.ydoc.get_update(self.ydoc.get_state())
        except LET_THROUGH:
            raise
        except BaseException as exc:
            self._break(exc, "delete set")
            raise Rejected("the document could not encode its delete set") from None
        return yjs_update.deletes_covered(update, known)

    async def _integrate(self, update: bytes, frame: bytes, origin: Any, advance: Any) -> None:
        try:
            self.ydoc.apply_update(update)
        except ValueError as exc:
            # yrs refused it while decoding, before integrating anything: the doc is as before.
            raise protocol.Malformed(f"invalid update: {exc}") from None
        except LET_THROUGH:
            raise
        except BaseException as exc:  # PanicException and anything else the engine raises midway
            self._break(exc, "apply update")
            raise Rejected("update rejected by the CRDT engine") from None
        clocks = self._clocks
        if clocks is not None:
            if type(advance) is tuple:
                client, clock = advance
                if clock > clocks.get(client, 0):
                    clocks[client] = clock
            elif advance is not None:
                for client, _, end in advance.sections:
                    if end is None:  # a large section not walked: re-read the clocks when next needed
                        self._clocks = None
                        break
                    if end > clocks.get(client, 0):
                        clocks[client] = end
        self._remember(update)
        self.version += 1
        self.broadcast(frame)
        await self.hooks.change(self, update, origin)

    async def write(self, edit: Callable[[pycrdt.Doc], None], origin: Any = HTTP) -> None:
        """A server-side edit of the room's doc (e.g. the fleet document's `live` map): `edit(doc)` runs
        in one transaction; the update it made is relayed, stored and seen by the change hooks like
        any other."""
        if self.broken is not None:
            await (await asyncio.shield(self.broken)).write(edit, origin)
            return
        before = self.ydoc.get_state()
        with self.ydoc.transaction():
            edit(self.ydoc)
        update = self.ydoc.get_update(before)
        self._clocks = None
        self._remember(update)
        self.version += 1
        self.broadcast(protocol.update_frame(update))
        await self.hooks.change(self, update, origin)

    # -- clocks: what the doc has of each client, to refuse gaps -----------------------------------

    def _clock_map(self) -> dict[int, int]:
        """client -> a clock the doc has reached (exact when read, a lower bound after updates)."""
        if self._clocks is None:
            self._clocks = yjs_update.state(doc_reads.state(self.ydoc))
        return self._clocks

    def _remember(self, update: bytes) -> None:
        """Hashes of the updates relayed lately (siphash, keyed per process), so a client echoing one
        back (pycrdt's Provider re-sends every update it applies) is recognised when yrs alone could
        not tell its deletions are old."""
        relayed = self._relayed
        relayed[hash(update)] = None
        if len(relayed) > ECHO_ENTRIES:
            del relayed[next(iter(relayed))]

    def holds_from(self, origin: Any) -> bool:
        """Whether an update of `origin` waits for structs it builds on (not applied, not stored)."""
        return any(o is origin for _, o in self._held)

    def _hold(self, update: bytes, origin: Any) -> None:
        held = self._held
        held.append((update, origin))
        self._held_bytes += len(update)
        while len(held) > HELD_UPDATES or self._held_bytes > HELD_BYTES:
            dropped, _ = held.pop(0)
            self._held_bytes -= len(dropped)
            log.warning("held_update_dropped", customer_id=self.customer_id, room=self.doc, bytes=len(dropped))

    async def _release(self) -> None:
        """Apply held updates whose missing structs have arrived, until none is ready."""
        if self._releasing:
            return
        self._releasing = True
        try:
            progress = True
            while progress and self._held:
                progress = False
                held, self._held, self._held_bytes = self._held, [], 0
                for update, origin in held:
                    if self.broken is not None:
                        return
                    version = self.version
                    try:
                        await self._apply(update, protocol.update_frame(update), origin)  # held again if early
                    except protocol.Malformed as exc:
                        log.warning("held_update_rejected", customer_id=self.customer_id, room=self.doc, error=str(exc))
                    progress = progress or self.version != version
        finally:
            self._releasing = False

    def _break(self, exc: BaseException, stage: str) -> None:
        """The engine failed on this doc: never touch it again; the registry rebuilds the room."""
        if self.broken is not None:
            return
        log.error(
            "room_engine_failed",
            customer_id=self.customer_id,
            room=self.doc,
            stage=stage,
            error=f"{type(exc).__name__}: {str(exc)[:200]}",
        )
        if self.on_broken is not None:
            self.broken = self.on_broken(self)
        else:  # a room outside any registry: nothing to move, nobody to serve
            self.broken = asyncio.get_running_loop().create_future()
            self.broken.set_exception(Rejected("document unavailable"))
            self.broken.exception()

    async def server_awareness(self, state: str | None) -> None:
        """Publish the server's own awareness state in this room (client id SERVER_AWARENESS_ID; a
        JSON object, at most protocol.MAX_AWARENESS_STATE_BYTES, or None to remove it): relayed to
        the peers here, and to the awareness hooks with origin SERVER (fan-out sends it to the other
        nodes). Its clock is the wall clock in ms (at least the last one + 1), so the nodes that
        publish the same room's state agree on which is newer."""
        if state is not None and len(state.encode()) > protocol.MAX_AWARENESS_STATE_BYTES:
            raise ValueError("server awareness state too large")
        current = self._awareness.get(SERVER_AWARENESS_ID)
        clock = max(current[0] + 1 if current else 0, int(time.time() * 1000))
        self._awareness[SERVER_AWARENESS_ID] = (clock, state)
        self._server_renewed = asyncio.get_running_loop().time()
        frame = protocol.awareness_frame([(SERVER_AWARENESS_ID, clock, state)])
        self.broadcast(frame)
        await self.hooks.awareness(self, frame, SERVER)

    async def renew_server_awareness(self, older_than: float = SERVER_AWARENESS_RENEW) -> bool:
        """Publish the server's state again (a new clock) when peers are here and it is older than
        `older_than` seconds, so their awareness does not time it out."""
        current = self._awareness.get(SERVER_AWARENESS_ID)
        if current is None or current[1] is None or not self.connections:
            return False
        if asyncio.get_running_loop().time() - self._server_renewed < older_than:
            return False
        await self.server_awareness(current[1])
        return True

    def _apply_awareness(self, entries, conn: Connection | None) -> bool:
        """y-protocols' rule: a newer clock wins; an equal clock may only remove. True if any applied."""
        states = self._awareness
        if conn is not None:
            ids = conn.awareness_ids
            new = {client for client, _clock, state in entries if state is not None and client not in ids}
            if new and len(ids) + len(new) > MAX_AWARENESS_CLIENTS_PER_PEER:
                raise protocol.Malformed(
                    f"more than {MAX_AWARENESS_CLIENTS_PER_PEER} awareness clients on one connection"
                )
        changed = False
        for client, clock, state in entries:
            current = states.get(client)
            if (
                current is None
                or current[0] < clock
                or (current[0] == clock and state is None and current[1] is not None)
            ):
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
        for client in removed[: max(0, len(removed) - MAX_AWARENESS_REMOVED // 2)]:
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

    def __init__(
        self, *, evict_after: float, spawn: Callable[[Awaitable[None], str], asyncio.Task] | None = None
    ) -> None:
        self.hooks = HookList()
        self.evict_after = evict_after
        self.accepting = True
        self._rooms: dict[tuple[str, str], Room] = {}
        self._loading: dict[tuple[str, str], asyncio.Future] = {}
        self._building: dict[tuple[str, str], Room] = {}  # the room each load fills
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

    async def get(self, customer_id: str, doc: str, early: Connection | None = None) -> Room:
        """The loaded room; loads it once however many callers ask at the same instant.
        Returns without suspending when the room is already loaded. `early`: a peer that will join
        the room, sent the doc while it loads (Room.expect) when it comes in time."""
        key = (str(customer_id), doc)
        room = self._rooms.get(key)
        if room is not None:
            return room
        pending = self._loading.get(key)
        building: Room | None
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[key] = pending
            building = self._building[key] = Room(key[0], key[1], self.hooks)
            self._spawn(self._load(key, pending), f"load-room:{key[0]}/{doc}")
        else:
            building = self._building.get(key)  # None while a broken room's writes are made durable
        if early is not None and building is not None:
            building.expect(early)
        return await asyncio.shield(pending)

    async def _load(self, key: tuple[str, str], pending: asyncio.Future) -> None:
        room = self._building.get(key)
        if room is None:
            room = self._building[key] = Room(key[0], key[1], self.hooks)
        room.on_broken = self._rebuild
        try:
            await self.hooks.load(room)
        except BaseException as exc:
            log.exception("room_load_failed", customer_id=key[0], room=key[1])
            self._loading.pop(key, None)
            self._building.pop(key, None)
            if not pending.done():
                pending.set_exception(exc if isinstance(exc, Exception) else RuntimeError("load cancelled"))
                pending.exception()  # retrieved: waiters may all be gone
            if not isinstance(exc, Exception):
                raise
            return
        room.loaded()
        self._rooms[key] = room
        self._loading.pop(key, None)
        self._building.pop(key, None)
        pending.set_result(room)
        self._schedule_eviction(room)  # no peer yet (HTTP load): evicted unless somebody joins
        log.info("room_loaded", customer_id=key[0], room=key[1])

    # -- a room whose doc the engine broke ----------------------------------------------------------

    def _rebuild(self, old: Room) -> asyncio.Future:
        """Forget `old` at once (new lookups wait for its replacement, as for any load), make what it
        already handed to the hooks durable, load a fresh room from PostgreSQL and move the peers
        there. Returns the future of the fresh room (frames for `old` are forwarded to it)."""
        key = (old.customer_id, old.doc)
        if self._rooms.get(key) is old:
            del self._rooms[key]
        if old._evict_task is not None:
            old._evict_task.cancel()
            old._evict_task = None
        fresh = self._loading.get(key)
        if fresh is None:
            fresh = asyncio.get_running_loop().create_future()
            self._loading[key] = fresh
        self._spawn(self._replace(old, key, fresh), f"rebuild-room:{old.name}")
        return fresh

    async def _replace(self, old: Room, key: tuple[str, str], fresh: asyncio.Future) -> None:
        delay = 0.2
        while True:
            try:
                await old.hooks.store(old)  # every update `old` accepted is in the log: commit it
                break
            except Exception:
                log.exception("room_store_failed", customer_id=old.customer_id, room=old.doc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        await old.hooks.evict(old)
        try:
            await self._load(key, fresh)
        finally:
            if not fresh.done() or fresh.exception() is not None:
                for conn in tuple(old.connections):  # the doc cannot be loaded: peers reconnect later
                    conn.abort(INTERNAL_ERROR, "document could not be reloaded")
        room: Room = fresh.result()
        room._awareness.update(old._awareness)
        for conn in tuple(old.connections):
            old.connections.pop(conn, None)
            if conn.close_code is None:
                room.join(conn)
        log.info("room_rebuilt", customer_id=old.customer_id, room=old.doc, peers=len(room.connections))

    # -- peers ------------------------------------------------------------------------------------

    def join(self, room: Room, conn: Connection) -> None:
        room.join(conn)

    def leave(self, room: Room, conn: Connection) -> None:
        room = conn.room or room  # a rebuilt room moved its peers to the fresh one
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

    def close_customer_nowait(self, customer_id: str, code: int = FORBIDDEN, reason: str = "customer suspended") -> int:
        return self.close_where(customer_id, lambda _doc: True, code, reason)

    def close_where(
        self,
        customer_id: str,
        doc_matches: Callable[[str], bool],
        code: int,
        reason: str,
        conn_matches: Callable[[Connection], bool] | None = None,
    ) -> int:
        """Close every connection of the customer to a doc `doc_matches` (e.g. a deleted vehicle's
        tracks), only those `conn_matches` when given (e.g. one sign-in session's)."""
        closed = 0
        for room in self.rooms(customer_id):
            if not doc_matches(room.doc):
                continue
            for conn in tuple(room.connections):
                if conn_matches is None or conn_matches(conn):
                    conn.abort(code, reason)
                    closed += 1
        return closed

    async def close_customer(self, customer_id: str, code: int = FORBIDDEN, reason: str = "customer suspended") -> int:
        """Close every connection of the customer (e.g. suspended: 4403, clients stop retrying)."""
        closed = self.close_customer_nowait(customer_id, code, reason)
        log.info("customer_connections_closed", customer_id=str(customer_id), connections=closed, code=code)
        return closed

    async def renew_server_awareness(self) -> int:
        """Renew the server's awareness state in every room with peers (called every few seconds)."""
        renewed = 0
        for room in self.rooms():
            if room.broken is None and await room.renew_server_awareness():
                renewed += 1
        return renewed

    def close_session(
        self, customer_id: str, session: str, code: int = UNAUTHORIZED, reason: str = "signed out"
    ) -> int:
        """Close every connection opened with a credential of this sign-in session (it ended)."""
        if not session:
            return 0
        return self.close_where(customer_id, lambda _doc: True, code, reason, lambda conn: conn.app_session == session)

    def close_idle(self, timeout: float) -> int:
        """Close (1001) every connection that sent nothing for `timeout` seconds (websocket pings
        and pongs count); ping every one quiet for half of it, so a silent client that answers
        pings is never closed."""
        now = asyncio.get_running_loop().time()
        cutoff, quiet = now - timeout, now - timeout / 2
        closed = 0
        for room in self.rooms():
            for conn in tuple(room.connections):
                if conn.close_code is not None:
                    continue  # closing already
                if conn.last_seen < cutoff:
                    conn.abort(GOING_AWAY, "idle timeout")
                    closed += 1
                elif conn.last_seen < quiet:
                    conn.ping()
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
