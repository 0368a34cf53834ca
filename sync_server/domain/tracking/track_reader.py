"""The track reader: new elements of loaded track documents, decoded into columns (`Chunk`s).

Reading what an update inserted means converting every new element to a Python dict inside the
update's transaction (pycrdt's `event.delta`) and then decoding the dicts: ~2 us a point, on top of
the ~1 us the CRDT apply itself costs. A phone back from a day offline sends 50,000 points in one
update, so on the event loop that is ~150 ms during which no websocket frame and no database
round trip of any room moves, and the node uses one core while PostgreSQL waits for rows.

So by default (`TRACKING_READER=process`) a helper process does it: it keeps its own copy of each
loaded track document, receives the room's state when the room loads and then every update the
room applies (in the order applied; a pipe carries them), observes its copy's `points` array and
sends back decoded chunks with their element indices. The event loop only applies updates (as for
any room) and commits batches; the decoding runs on the other core. `TRACKING_READER=inline`
observes the room's own document on the event loop instead (the same `DocReader`).

Element indices are assigned in observed order from the room's durable progress (`done`) on; the
materializer keeps chunks by index, so a reopened room (the helper restarted, or its copy failed)
simply starts again at `done` and whatever a batch in flight commits meanwhile is dropped by index.
If the helper dies it is restarted and every loaded track room is reopened from its current state.

The protocol on the pipes: 8-byte length + pickle. Main -> helper: ("open", key, epoch, state, done),
("update", key, epoch, update), ("close", key). Helper -> main: ("chunk", key, epoch, Chunk),
("failed", key, epoch, error).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, BinaryIO, Protocol

import pycrdt
import structlog

from sync_server.domain.tracking.points import Chunk, decode_chunk, decode_json

log = structlog.get_logger("sync_server.domain.tracking.track_reader")

_LENGTH = struct.Struct("<Q")
PIECE = 10_000  # elements decoded and sent at a time
RESTART_DELAY = 0.5  # seconds between a helper's death and its replacement (at most 30 s, doubling)


class DocReader:
    """Observes a `points` array: each transaction's inserted elements, decoded, go to `emit` as
    Chunks of up to PIECE elements. Elements get indices in observed order starting at `next_index`;
    those below `skip_below` (already materialized) are not decoded.

    An append that is most of the array (a phone's offline upload, a room's state on load) is read
    as JSON (`points.decode_json`: no Python dict per element); anything else, or any element of
    an unusual shape, through pycrdt's delta. An append is told from an insert elsewhere by a sticky
    index on the last element seen: it stays where it was only if nothing was inserted before it."""

    def __init__(
        self,
        points: pycrdt.Array,
        emit: Callable[[Chunk], None],
        next_index: int = 0,
        skip_below: int = 0,
        room: str = "",
    ) -> None:
        self.next_index = next_index
        self.skip_below = skip_below
        self.emit = emit
        self.room = room
        self._points = points
        self._array = points.integrated
        self._length = 0  # the array's length after the last transaction seen
        self._end: pycrdt.StickyIndex | None = None  # on the last element, while `_marked`
        self._marked = False
        self.mark_end()
        # On the Rust type itself: pycrdt's own `observe` wraps every event and walks each value in
        # Python looking for nested shared types, which track points never hold.
        self.subscription = self._array.observe(self._observe)

    def _observe(self, event) -> None:
        try:  # never raise into the CRDT engine
            txn = event.transaction
            length = self._array.len(txn)
            added = length - self._length
            chunk = None
            # the sticky index resolved in this transaction (pycrdt's own get_index would open another;
            # `_sticky_index` is pycrdt's Rust object, stable within the pinned pycrdt < 0.15)
            if (
                0 < added
                and 2 * added >= length
                and (
                    self._length == 0
                    or (
                        self._marked
                        and self._end is not None
                        and self._end._sticky_index.get_offset(txn) == self._length
                    )
                )
            ):
                first = self.next_index
                skip = max(0, min(added, self.skip_below - first))
                chunk = decode_json(self._array.to_json(txn), self._length + skip, first + skip)
                if chunk is not None:
                    self.next_index += added
            if chunk is None:
                chunk = self._from_delta(event)
            self._length = length
            self._marked = False  # until mark_end: an insert is not taken for an append
            if chunk is not None:
                for start in range(chunk.first, chunk.end, PIECE):  # the first rows can go while the rest decodes
                    self.emit(chunk.part(start, start + PIECE))
        except Exception:
            log.exception("track_observer_failed", room=self.room)

    def _from_delta(self, event) -> Chunk | None:
        inserted: list[Any] = []
        for change in event.delta:
            items = change.get("insert")
            if items:
                inserted.extend(items)
            elif "delete" in change:
                log.warning("track_points_deleted", room=self.room, deleted=change["delete"])
        if not inserted:
            return None
        first = self.next_index
        self.next_index += len(inserted)
        skip = max(0, min(len(inserted), self.skip_below - first))
        return decode_chunk(inserted[skip:], first + skip)

    def mark_end(self) -> None:
        """After each transaction (not inside it: pycrdt makes a sticky index in a transaction of
        its own), remember the last element, so the next insert can be told to be an append."""
        self._length = len(self._points)
        self._end = self._points.sticky_index(self._length, pycrdt.Assoc.BEFORE) if self._length else None
        self._marked = True

    def drop(self) -> None:
        self.subscription.drop()


def read_state(state: bytes, done: int, emit: Callable[[Chunk], None], room: str = "") -> tuple[pycrdt.Doc, DocReader]:
    """A fresh copy of a track document from its state, observed: elements from `done` on are emitted
    (the whole array is one append, read as JSON: 50,000 points in ~200 ms with the apply, against
    ~325 ms for pycrdt's `to_py` alone)."""
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    reader = DocReader(doc.get("points", type=pycrdt.Array), emit, 0, done, room)
    doc.apply_update(state)
    reader.mark_end()
    return doc, reader


class Subscriber(Protocol):
    """What a reader needs of a track room (materializer.TrackRoom)."""

    key: str
    epoch: int
    done: int

    def state(self) -> bytes: ...

    def points(self) -> pycrdt.Array: ...

    def restart_at(self, epoch: int) -> None: ...

    def receive(self, chunk: Chunk) -> None: ...


class InlineReader:
    """Observes the rooms' own documents on the event loop."""

    def __init__(self) -> None:
        self._readers: dict[str, DocReader] = {}
        self._epochs = itertools.count(1)

    async def open(self, room: Subscriber) -> None:
        self.close(room.key)
        room.restart_at(next(self._epochs))
        _, loaded = read_state(room.state(), room.done, room.receive, room.key)
        loaded.drop()
        points = room.points()
        self._readers[room.key] = DocReader(points, room.receive, len(points), 0, room.key)

    def update(self, room: Subscriber, update: bytes) -> None:
        """Nothing to forward (the observer sits on the room's own document): mark its new end."""
        reader = self._readers.get(room.key)
        if reader is not None:
            reader.mark_end()

    def close(self, key: str) -> None:
        reader = self._readers.pop(key, None)
        if reader is not None:
            reader.drop()

    async def stop(self) -> None:
        for key in list(self._readers):
            self.close(key)


class _Helper:
    """One running helper process and the two threads that move bytes through its pipes (blocking
    writes and reads off the event loop: a 3.6 MB update crosses a 64 KB pipe in one go, whatever
    the loop is doing)."""

    def __init__(self, env: dict[str, str], deliver: Callable[[_Helper, tuple | None], None]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sync_server.domain.tracking.track_reader"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        loop = asyncio.get_running_loop()
        self._writer = threading.Thread(target=self._write, name="track-reader-write", daemon=True)
        self._reader = threading.Thread(target=self._read, args=(loop, deliver), name="track-reader-read", daemon=True)
        self._writer.start()
        self._reader.start()

    def send(self, message: tuple) -> None:
        self._outbox.put(_frame(message))

    def _write(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while (data := self._outbox.get()) is not None:
                stdin.write(data)
                stdin.flush()
            stdin.close()
        except (OSError, ValueError):  # the helper is gone: its reader thread reports that
            pass

    def _read(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[_Helper, tuple | None], None]) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            while (message := _read_message(stdout)) is not None:
                loop.call_soon_threadsafe(deliver, self, message)
        except Exception:
            log.exception("track_reader_pipe_failed")
        try:
            loop.call_soon_threadsafe(deliver, self, None)  # the end of this helper
        except RuntimeError:  # the loop is closed
            pass

    def close(self) -> None:
        self._outbox.put(None)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class _Slot:
    """One helper's place: the helper running in it (None while it restarts) and its rooms."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.helper: _Helper | None = None
        self.rooms: dict[str, Subscriber] = {}
        self.restart: asyncio.TimerHandle | None = None
        self.delay = RESTART_DELAY


class ProcessReader:
    """The helper processes, seen from the event loop. Each track room is read by one of `helpers`
    processes (the one with the fewest rooms when it opens): two rooms' uploads are decoded at once,
    on both cores, while PostgreSQL has nothing to do yet. A helper starts with its first room; its
    chunks are relayed to their rooms; when it dies another is started in its place (RESTART_DELAY,
    doubling up to 30 s while it keeps dying without delivering anything) and its rooms are opened
    again from their current state."""

    def __init__(self, helpers: int = 2, env: dict[str, str] | None = None) -> None:
        self._env = {**os.environ, **(env or {})}
        self._slots = [_Slot(n) for n in range(max(1, helpers))]
        self._slot_of: dict[str, _Slot] = {}
        self._epochs = itertools.count(1)
        self._stopped = False

    @property
    def pids(self) -> list[int]:
        return [slot.helper.proc.pid for slot in self._slots if slot.helper is not None]

    async def open(self, room: Subscriber) -> None:
        self.close(room.key)
        slot = min(self._slots, key=lambda s: len(s.rooms))
        slot.rooms[room.key] = room
        self._slot_of[room.key] = slot
        if slot.helper is not None:
            self._open(slot, room)
        elif slot.restart is None:
            self._start(slot)  # opens every room of the slot
        # else: a restart is due; it opens every room of the slot

    def _start(self, slot: _Slot) -> None:
        slot.restart = None
        if self._stopped:
            return
        try:
            slot.helper = _Helper(self._env, self._deliver)
        except Exception:
            log.exception("track_reader_start_failed", restart_in=slot.delay)
            self._schedule_restart(slot)
            return
        log.info("track_reader_started", pid=slot.helper.proc.pid, slot=slot.number, rooms=len(slot.rooms))
        for room in list(slot.rooms.values()):
            self._open(slot, room)

    def _schedule_restart(self, slot: _Slot) -> None:
        slot.restart = asyncio.get_running_loop().call_later(slot.delay, self._start, slot)
        slot.delay = min(30.0, slot.delay * 2)

    def _open(self, slot: _Slot, room: Subscriber) -> None:
        epoch = next(self._epochs)
        room.restart_at(epoch)
        if slot.helper is not None:
            slot.helper.send(("open", room.key, epoch, room.state(), room.done))

    def update(self, room: Subscriber, update: bytes) -> None:
        """Queued for the helper's writer thread (the hot path never waits for a helper). An update
        lost with a dying helper is covered by the reopen that follows, which sends the full state."""
        slot = self._slot_of.get(room.key)
        if slot is not None and slot.helper is not None and slot.rooms.get(room.key) is room and room.epoch:
            slot.helper.send(("update", room.key, room.epoch, update))

    def close(self, key: str) -> None:
        slot = self._slot_of.pop(key, None)
        if slot is not None and slot.rooms.pop(key, None) is not None and slot.helper is not None:
            slot.helper.send(("close", key))

    def _deliver(self, helper: _Helper, message: tuple | None) -> None:
        """On the event loop: a message of `helper`, or None when its pipe ended."""
        slot = next((s for s in self._slots if s.helper is helper), None)
        if slot is None:
            return  # an earlier helper's last words
        if message is None:
            slot.helper = None
            helper.close()
            if not self._stopped:
                log.error(
                    "track_reader_died",
                    pid=helper.proc.pid,
                    code=helper.proc.poll(),
                    slot=slot.number,
                    rooms=len(slot.rooms),
                    restart_in=slot.delay,
                )
                self._schedule_restart(slot)
            return
        kind, key, epoch = message[:3]
        room = slot.rooms.get(key)
        if room is None or room.epoch != epoch:
            return  # closed, or reopened since: a stale message
        if kind == "chunk":
            slot.delay = RESTART_DELAY
            room.receive(message[3])
        else:  # the copy could not take an update the room took: start the copy again
            log.error("track_reader_copy_failed", room=key, error=message[3])
            self._open(slot, room)

    async def stop(self) -> None:
        self._stopped = True
        helpers = []
        for slot in self._slots:
            if slot.restart is not None:
                slot.restart.cancel()
            if slot.helper is not None:
                slot.helper.close()  # its input ends: the helper exits
                helpers.append(slot.helper)
                slot.helper = None
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, h.wait, 5.0) for h in helpers))


def reader_for(helpers: int) -> InlineReader | ProcessReader:
    """TRACKING_READERS: that many helper processes, or 0 for the event loop itself."""
    return ProcessReader(helpers) if helpers > 0 else InlineReader()


# --- the helper process ----------------------------------------------------------------------------


def _frame(message: tuple) -> bytes:
    """One message on a pipe: its pickle's length (8 bytes), then the pickle (`_read_message`)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def _send_chunk(send: Callable[[tuple], None], key: str, epoch: int, chunk: Chunk) -> None:
    send(("chunk", key, epoch, chunk))


def _read_message(stream: IO[bytes]) -> tuple | None:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    size = _LENGTH.unpack(head)[0]
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return pickle.loads(payload)


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """The helper's loop: until its input ends (the server stopped or died)."""
    copies: dict[str, tuple[int, pycrdt.Doc, DocReader]] = {}

    def send(message: tuple) -> None:
        out.write(_frame(message))
        out.flush()

    def close(key: str) -> None:
        copy = copies.pop(key, None)
        if copy is not None:
            copy[2].drop()

    while (message := _read_message(inp)) is not None:
        kind, key = message[0], message[1]
        if kind == "close":
            close(key)
            continue
        epoch = message[2]
        try:
            if kind == "open":
                close(key)
                state, done = message[3], message[4]
                doc, reader = read_state(state, done, functools.partial(_send_chunk, send, key, epoch), key)
                copies[key] = (epoch, doc, reader)
            elif kind == "update":
                copy = copies.get(key)
                if copy is not None and copy[0] == epoch:
                    copy[1].apply_update(message[3])
                    copy[2].mark_end()
        except BrokenPipeError:
            return
        except Exception as exc:
            close(key)
            send(("failed", key, epoch, repr(exc)))


def main() -> None:
    from sync_server import logs

    logs.configure(os.environ.get("LOG_FORMAT", "console"), os.environ.get("LOG_LEVEL", "info"))
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except (BrokenPipeError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
