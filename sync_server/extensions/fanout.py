"""Cross-node fan-out through Redis Streams: a room hook (the sync core never imports Redis).

Every document has a stream `{prefix}doc:{customer}:{doc}`. A node XADDs (MAXLEN ~) each update and
awareness frame its own clients produce; every node that has the room loaded reads the stream from
the last id it saw (XREAD, one position per room), so a reader that is slow or briefly cut off
resumes where it stopped instead of losing messages, as plain pub/sub would.

Stream entries (n = node id, k = kind, d = bytes):
  u  a Yjs update          -> room.apply_remote (hooks see REMOTE: not re-published, not stored here)
  a  an awareness frame    -> room.apply_remote_awareness
  q  "who is here?"        (a node loaded the room) -> every node answers with its own clients' presence
  r  "reload from PostgreSQL": the sender had updates that never reached Redis; they are committed now

Catch-up, so documents converge without clients noticing: after losing Redis (or when its position
was trimmed away) a node re-syncs each loaded room from PostgreSQL: the stored doc's diff against the
room's state vector (Yjs updates are idempotent). A node whose own publishes failed flushes its
update log and sends `r` once Redis is back. Loading a room replays what the stream still holds, which
covers updates another node published but had not committed yet.

Presence: nodes heartbeat `{prefix}node:{id}` (expires after 3 beats; the value is a small JSON
object of the node's open connections and loaded rooms, read by the operator console). Awareness client ids learnt
from a node whose heartbeat is gone are removed (clock + 1) and the removal relayed to local clients.
The same keys tell a tenant migration which nodes must pause the customer's writes (`live_nodes`,
provisioning/cluster_pause.py).

Redis down: local clients are served as before; publishes are not queued (their rooms are marked for
`r`); the reader reconnects with backoff, then catches up.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
from redis.exceptions import RedisError

from storage import documents
from sync_server.extensions import doc_rebuild
from sync_server.sync import protocol
from sync_server.sync.hooks import RoomHooks, is_remote
from sync_server.sync.rooms import SERVER_AWARENESS_ID, Room

log = structlog.get_logger("sync_server.extensions.fanout")

Key = tuple[str, str]  # (customer id, doc)

READ_COUNT = 500  # entries per stream per XREAD
BLOCK_MS = 1000  # XREAD blocks this long at most (new rooms also wake it at once)
PUBLISH_BATCH = 256  # XADDs per pipeline
OUTBOX_LIMIT = 100_000  # queued entries past this are not queued: their rooms get an `r` instead
STREAM_TTL_MS = 86_400_000  # an idle document's stream disappears after a day
MAX_BACKOFF = 5.0
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

UPDATE, AWARENESS, QUERY, RELOAD = b"u", b"a", b"q", b"r"


def node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def alive_key(prefix: str, node: str) -> str:
    return f"{prefix}node:{node}"


def _glob_escape(text: str) -> str:
    """`text` as a literal in a Redis MATCH pattern (a prefix may hold * ? [ ] or \\)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _entry_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class Fanout(RoomHooks):
    def __init__(self, runtime, client) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.redis = client
        self.node = settings.node_id or node_name()
        self._node_b = self.node.encode()
        self.prefix = settings.redis_prefix
        self.maxlen = settings.fanout_stream_maxlen
        self.beat = settings.node_heartbeat_seconds
        self.dead_after = self.beat * 3
        self.connected = False
        self.connected_since = 0.0
        self.started_at = time.time()
        self.wake_key = f"{self.prefix}node:{self.node}:wake"
        self._rooms: dict[Key, Room] = {}
        self._positions: dict[Key, str] = {}  # last stream id read per loaded room
        self._history_to: dict[Key, tuple[int, int]] = {}  # awareness at or before this id is history
        self._streams: dict[bytes, Key] = {}
        self._sources: dict[Key, dict[int, str]] = {}  # awareness client id -> node that introduced it
        self._writers: dict[Key, set[str]] = {}  # nodes whose updates this room received
        self._outbox: deque[tuple[Key, bytes, bytes]] = deque()
        self._outbox_ready = asyncio.Event()
        self._dirty: set[Key] = set()  # rooms with updates that never reached Redis
        self._resyncing: dict[Key, asyncio.Task] = {}
        self._resync_again: set[Key] = set()
        self._tasks: list[asyncio.Task] = []
        self.stats = {"published": 0, "received": 0, "resyncs": 0, "reconnects": 0}
        # Told the age (seconds) of every remote update when it is handled: now minus the time in its
        # stream entry id (Redis's clock; the metrics extension's stream lag).
        self.on_lag: Callable[[float], None] | None = None

    def stream(self, key: Key) -> str:
        return f"{self.prefix}doc:{key[0]}:{key[1]}"

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        spawn = self.runtime.spawn
        self._tasks = [
            spawn(self._read_loop(), "fanout-reader"),
            spawn(self._publish_loop(), "fanout-publisher"),
            spawn(self._heartbeat_loop(), "fanout-heartbeat"),
        ]
        log.info("fanout_started", node=self.node, prefix=self.prefix)

    async def stop(self) -> None:
        """After drain: let the last publishes (presence removals of closed peers) out, then leave."""
        deadline = time.monotonic() + 2.0
        while self._outbox and self.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self.redis.delete(alive_key(self.prefix, self.node), self.wake_key), 1.0)
        except REDIS_ERRORS:
            pass
        await self.redis.aclose()

    def _disconnected(self, exc: BaseException) -> None:
        if self.connected:
            log.warning("fanout_disconnected", node=self.node, error=repr(exc))
        self.connected = False
        self._spill()

    # -- hooks ------------------------------------------------------------------------------------

    async def load(self, room: Room) -> None:
        key = (room.customer_id, room.doc)
        self._rooms[key] = room
        self._streams[self.stream(key).encode()] = key
        self._sources[key] = {}
        self._positions[key] = "0-0"
        if not self.connected:
            return  # replayed after the reconnect (with the catch-up from PostgreSQL)
        try:
            await asyncio.wait_for(self._replay(key, room), 2.0)
            await asyncio.wait_for(self._wake(), 1.0)
        except REDIS_ERRORS as exc:
            self._disconnected(exc)
            return
        self._queue(key, QUERY, b"")

    async def change(self, room: Room, update: bytes, origin: Any) -> None:
        if not is_remote(origin):
            self._queue((room.customer_id, room.doc), UPDATE, update)

    async def awareness(self, room: Room, frame: bytes, origin: Any) -> None:
        if not is_remote(origin):
            self._queue((room.customer_id, room.doc), AWARENESS, frame)

    async def evict(self, room: Room) -> None:
        key = (room.customer_id, room.doc)
        if self._rooms.get(key) is not room:
            return
        for table in (self._rooms, self._positions, self._history_to, self._sources, self._writers):
            table.pop(key, None)
        self._streams.pop(self.stream(key).encode(), None)
        task = self._resyncing.pop(key, None)
        if task is not None:
            task.cancel()

    # -- publishing -------------------------------------------------------------------------------

    def _queue(self, key: Key, kind: bytes, data: bytes) -> None:
        if not self.connected or len(self._outbox) >= OUTBOX_LIMIT:
            if kind in (UPDATE, RELOAD):
                self._dirty.add(key)  # its peers elsewhere reload it from PostgreSQL later
            return
        self._outbox.append((key, kind, data))
        if not self._outbox_ready.is_set():
            self._outbox_ready.set()

    def _spill(self) -> None:
        while self._outbox:
            key, kind, _ = self._outbox.popleft()
            if kind in (UPDATE, RELOAD):
                self._dirty.add(key)

    async def _publish_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox and self.connected:
                batch = [self._outbox.popleft() for _ in range(min(PUBLISH_BATCH, len(self._outbox)))]
                pipe = self.redis.pipeline(transaction=False)
                streams = set()
                for key, kind, data in batch:
                    name = self.stream(key)
                    streams.add(name)
                    pipe.xadd(name, {b"n": self._node_b, b"k": kind, b"d": data}, maxlen=self.maxlen, approximate=True)
                for name in streams:
                    pipe.pexpire(name, STREAM_TTL_MS)
                try:
                    await pipe.execute()
                except REDIS_ERRORS as exc:
                    self._dirty.update(key for key, kind, _ in batch if kind in (UPDATE, RELOAD))
                    self._disconnected(exc)
                    break
                self.stats["published"] += len(batch)

    async def _wake(self) -> None:
        """Interrupt this node's blocked XREAD so a newly loaded room is read at once."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(self.wake_key, {b"w": b"1"}, maxlen=10, approximate=False)
        pipe.pexpire(self.wake_key, STREAM_TTL_MS)
        await pipe.execute()

    # -- reading ----------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        backoff = 0.1
        while True:
            if not self.connected:
                try:
                    await asyncio.wait_for(self._connect(), 10.0)
                    backoff = 0.1
                except REDIS_ERRORS as exc:
                    log.info("fanout_redis_unavailable", node=self.node, error=repr(exc), retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
            try:
                await self._read_once()
            except REDIS_ERRORS as exc:
                self._disconnected(exc)

    async def _connect(self) -> None:
        await self.redis.ping()
        await self._heartbeat_once()
        for key, room in list(self._rooms.items()):
            if key not in self._history_to:  # loaded while Redis was away
                await self._replay(key, room)
        first = self.stats["reconnects"] == 0 and not self._rooms
        self.connected = True
        self.connected_since = time.monotonic()
        self.stats["reconnects"] += 1
        log.info("fanout_connected", node=self.node, rooms=len(self._rooms), dirty=len(self._dirty))
        if first:
            return
        # Catch up: whatever crossed while we were away is in PostgreSQL; presence is re-asked.
        for key in list(self._rooms):
            self._resync_soon(key)
            self._queue(key, QUERY, b"")
            self._answer_presence(key)
        if self._dirty:
            self.runtime.spawn(self._announce_dirty(), "fanout-announce-dirty")

    async def _replay(self, key: Key, room: Room) -> None:
        """Apply what the room's stream still holds (updates only; presence is asked for)."""
        entries = await self.redis.xrange(self.stream(key), "-", "+")
        last = (0, 0)
        updates = []
        for entry_id, fields in entries:
            last = _entry_id(entry_id)
            if fields.get(b"k") == UPDATE and fields.get(b"d"):
                updates.append(fields[b"d"])
        for update in updates:
            try:
                room.ydoc.apply_update(update)  # no peer has joined yet: nothing to relay
            except Exception as exc:
                log.warning("fanout_bad_update", room=room.name, error=repr(exc))
        if updates:
            room.version += 1  # the doc changed (what the room encoded of it before is stale)
        if self._rooms.get(key) is room:
            self._positions[key] = f"{last[0]}-{last[1]}"
            self._history_to[key] = last

    async def _read_once(self) -> None:
        streams: dict[Any, Any] = {self.wake_key: "$"}
        for open_key, position in self._positions.items():
            streams[self.stream(open_key)] = position
        response = await self.redis.xread(streams, count=READ_COUNT, block=BLOCK_MS)
        for name, entries in response or ():
            key = self._streams.get(name if isinstance(name, bytes) else name.encode())
            if key is None or key not in self._positions:
                continue  # the wake stream, or a room evicted meanwhile
            before = self._positions[key]
            for entry_id, fields in entries:
                if key not in self._positions:
                    break
                await self._handle(key, entry_id, fields)
                if key in self._positions:
                    self._positions[key] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            if len(entries) >= READ_COUNT and key in self._positions:
                await self._check_gap(key, before)

    async def _check_gap(self, key: Key, before: str) -> None:
        """A full batch means a backlog: if the stream was trimmed past where we were, reload."""
        info = await self.redis.xinfo_stream(self.stream(key))
        deleted = info.get("max-deleted-entry-id") or info.get(b"max-deleted-entry-id")
        if deleted and _entry_id(deleted) > _entry_id(before):
            log.warning("fanout_stream_trimmed_past_position", room=f"{key[0]}/{key[1]}")
            self._resync_soon(key)

    async def _handle(self, key: Key, entry_id, fields: dict) -> None:
        node = fields.get(b"n", b"")
        if node == self._node_b:
            return
        room = self._rooms[key]
        kind = fields.get(b"k")
        data = fields.get(b"d", b"")
        self.stats["received"] += 1
        try:
            if kind == UPDATE:
                if self.on_lag is not None:
                    self.on_lag(time.time() - _entry_id(entry_id)[0] / 1000)
                self._writers.setdefault(key, set()).add(node.decode())
                await room.apply_remote(data)
            elif kind == AWARENESS:
                if _entry_id(entry_id) > self._history_to.get(key, (0, 0)):
                    await self._remote_awareness(key, room, node.decode(), data)
            elif kind == QUERY:
                self._answer_presence(key)
            elif kind == RELOAD:
                self._resync_soon(key)
        except protocol.Malformed as exc:
            log.warning("fanout_malformed_entry", room=room.name, kind=kind, error=str(exc))

    # -- presence ---------------------------------------------------------------------------------

    async def _remote_awareness(self, key: Key, room: Room, node: str, frame: bytes) -> None:
        msg = protocol.decode(frame)
        if not isinstance(msg, protocol.AwarenessUpdate):
            return
        sources = self._sources.setdefault(key, {})
        for client, _clock, state in msg.entries:
            if client == SERVER_AWARENESS_ID:
                continue  # the server's own state belongs to every node: never reaped with one
            if state is None:
                if sources.get(client) == node:
                    del sources[client]
            else:
                sources[client] = node
        await room.apply_remote_awareness(frame)

    def _answer_presence(self, key: Key) -> None:
        """Publish the presence of this node's own clients of the room (asked by a node loading it)."""
        room = self._rooms.get(key)
        if room is None:
            return
        local: set[int] = set()
        for conn in room.connections:
            local |= conn.awareness_ids
        entries = [e for e in room.awareness_entries(local) if e[2] is not None]
        if entries:
            self._queue(key, AWARENESS, protocol.awareness_frame(entries))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.beat)
            if not self.connected:
                continue
            try:
                await asyncio.wait_for(self._heartbeat_once(), max(self.beat, 1.0))
                await asyncio.wait_for(self._reap_dead_nodes(), max(self.beat, 1.0))
            except REDIS_ERRORS as exc:
                self._disconnected(exc)

    def beat_value(self) -> bytes:
        """What the heartbeat says about this node (the operator console's nodes list reads it):
        open connections and loaded rooms now, when it started and when it beat."""
        rooms = self.runtime.rooms.rooms()
        return json.dumps(
            {
                "connections": sum(len(r.connections) for r in rooms),
                "rooms": len(rooms),
                "started_at": self.started_at,
                "beat_at": time.time(),
            }
        ).encode()

    async def _heartbeat_once(self) -> None:
        await self.redis.set(alive_key(self.prefix, self.node), self.beat_value(), px=int(self.dead_after * 1000))

    async def node_states(self) -> dict[str, dict]:
        """Every live node and what its last heartbeat said (an empty dict for a beat without it)."""
        nodes = sorted(await self.live_nodes())
        beats = await self.redis.mget([alive_key(self.prefix, n) for n in nodes]) if nodes else []
        states: dict[str, dict] = {}
        for node, beat in zip(nodes, beats):
            if beat is None:
                continue  # expired between the scan and the read
            try:
                value = json.loads(beat)
            except ValueError:
                value = None
            states[node] = value if isinstance(value, dict) else {}
        return states

    async def live_nodes(self) -> set[str]:
        """Every node whose heartbeat has not expired, this one included (raises on Redis errors:
        a caller that must reach every node cannot go on without knowing them)."""
        head = alive_key(self.prefix, "")
        pattern = _glob_escape(head) + "*"
        nodes = set()
        async for raw in self.redis.scan_iter(match=pattern, count=1000):
            key = raw.decode() if isinstance(raw, bytes) else raw
            if not key.endswith(":wake"):  # a node's wake stream lives beside its heartbeat
                nodes.add(key[len(head) :])
        return nodes

    async def _reap_dead_nodes(self) -> None:
        """Remove the presence that nodes which stopped beating introduced."""
        if time.monotonic() - self.connected_since < self.dead_after:
            return  # after a Redis restart, give live nodes time to beat again
        seen = {n for sources in self._sources.values() for n in sources.values()}
        seen.update(n for writers in self._writers.values() for n in writers)
        nodes = sorted(seen - {self.node})
        if not nodes:
            return
        beats = await self.redis.mget([alive_key(self.prefix, n) for n in nodes])
        dead = {n for n, beat in zip(nodes, beats) if beat is None}
        if not dead:
            return
        log.warning("nodes_presumed_dead", nodes=sorted(dead))
        for key, writers in list(self._writers.items()):
            if writers & dead:
                writers -= dead
                self.runtime.spawn(self._adopt(key), f"fanout-adopt:{key[0]}/{key[1]}")
        for key, sources in list(self._sources.items()):
            gone = [client for client, n in sources.items() if n in dead]
            room = self._rooms.get(key)
            for client in gone:
                del sources[client]
            if not gone or room is None:
                continue
            removal = [(c, clock + 1, None) for c, clock, state in room.awareness_entries(gone) if state is not None]
            if removal:
                # Relayed to local peers; a peer that meanwhile reconnected here re-announces itself.
                await room.apply_remote_awareness(protocol.awareness_frame(removal))

    # -- catch-up ---------------------------------------------------------------------------------

    def _resync_soon(self, key: Key) -> None:
        if key not in self._rooms:
            return
        if key in self._resyncing:
            self._resync_again.add(key)  # what it reads may predate what we were just told
            return
        task = self.runtime.spawn(self._resync(key), f"fanout-resync:{key[0]}/{key[1]}")
        self._resyncing[key] = task
        task.add_done_callback(lambda _t, key=key: self._resync_done(key))

    def _resync_done(self, key: Key) -> None:
        self._resyncing.pop(key, None)
        if key in self._resync_again:
            self._resync_again.discard(key)
            self._resync_soon(key)

    async def _resync(self, key: Key) -> None:
        """Bring a loaded room up to what PostgreSQL holds (state-vector diff; Yjs is idempotent)."""
        room = self._rooms.get(key)
        if room is None:
            return
        backoff = 0.2
        while True:
            try:
                db = await self.runtime.registry.for_customer(key[0])
                stored = await documents.load(db, key[0], key[1])
                break
            except Exception as exc:  # PostgreSQL away too: keep trying, local peers are served
                log.warning("fanout_resync_retry", room=room.name, error=repr(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        missing = await doc_rebuild.missing(stored.snapshot, stored.updates, room.ydoc.get_state())
        self.stats["resyncs"] += 1
        if self._rooms.get(key) is room and missing != protocol.EMPTY_UPDATE:
            await room.apply_remote(missing)
        log.info("fanout_resynced", room=room.name, bytes=len(missing))

    async def _adopt(self, key: Key) -> None:
        """A node that wrote to this room died: what it relayed here but may not have committed
        (its group-commit window) is written by this node too. Duplicates are harmless (idempotent)."""
        room = self._rooms.get(key)
        update_log = self.runtime.update_log
        if room is None or update_log is None:
            return
        db = await self.runtime.registry.for_customer(key[0])
        stored = await documents.load(db, key[0], key[1])
        stored_state = await doc_rebuild.state_vector(stored.snapshot, stored.updates)
        if self._rooms.get(key) is not room:
            return
        beyond = room.ydoc.get_update(stored_state)
        if beyond != protocol.EMPTY_UPDATE:
            update_log.append(key[0], key[1], beyond)
        log.info("fanout_adopted", room=room.name, bytes=len(beyond))

    async def _announce_dirty(self) -> None:
        """Our updates that never reached Redis: once committed, tell the other nodes to reload."""
        dirty, self._dirty = self._dirty, set()
        update_log = self.runtime.update_log
        for customer_id in sorted({key[0] for key in dirty}):
            if update_log is not None:
                await update_log.flush(customer_id)
        for key in dirty:
            self._queue(key, RELOAD, b"")
        log.info("fanout_reload_announced", rooms=len(dirty))


def install(runtime) -> Fanout:
    """Wire fan-out into the node (only when REDIS_URL is set)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(
        runtime.settings.redis_url, socket_timeout=BLOCK_MS / 1000 + 4, socket_connect_timeout=2.0
    )
    fanout = Fanout(runtime, client)
    runtime.rooms.hooks.add(fanout)
    runtime.on_start(fanout.start)
    runtime.on_stop(fanout.stop)
    runtime.fanout = fanout
    return fanout
