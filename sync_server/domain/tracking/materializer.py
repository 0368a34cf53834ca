"""The room hook that turns track documents into rows, and the fleet document's live map.

Track documents are `tracks/{vehicle}/{YYYY-MM-DD}` ({vehicle}: the vehicle's id, or its
vehicle_identifier) holding a Y.Array `points`. On load the hook reads the document's durable
progress and hands the room to the track reader (track_reader.py), which decodes every element past
it and then each update's new elements (no rescans: pycrdt reads ~10 us per indexed element), by
default in a helper process beside the event loop. Decoded chunks wait in the room's ElementQueue,
by element index; a worker task per room batches them (TRACKING_FLUSH_SECONDS, at most
TRACKING_BATCH_POINTS per transaction) and runs the pipeline off the hot path; a failed batch stays
queued and is retried with backoff.

Progress is a prefix count: elements are processed in the order they were observed, and an
element inserted before already-processed ones (two devices writing the same track concurrently)
just extends the processed prefix by one. After a restart the unprocessed elements are those past
the durable count, which holds for the documented client contract (append only). Rows are unique on
(customer, vehicle, time) regardless, so no contract breach can duplicate them.

Every batch that moves a vehicle's latest position forward also writes it into the customer's
`fleet` document (Y.Map `live`: vehicle id -> {t, lat, lng, speed, heading, accuracy, alt, name}) so
dashboards see vehicles move.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
import uuid

import pycrdt
import structlog

from storage import vehicles as vehicle_store
from sync_server.domain.tracking import feedback
from sync_server.domain.tracking.event_feed import FLEET_DOC
from sync_server.domain.tracking.pipeline import Batch, Pipeline
from sync_server.domain.tracking.points import Chunk, Point
from sync_server.domain.tracking.track_reader import InlineReader, ProcessReader
from sync_server.sync.connection import FORBIDDEN
from sync_server.sync.hooks import RoomHooks

log = structlog.get_logger("sync_server.domain.tracking.materializer")

TRACK_DOC = re.compile(r"^tracks/([^/]{1,100})/(\d{4}-\d{2}-\d{2})$")
STORE_WAIT_SECONDS = 10.0  # eviction/shutdown wait this long for a backlog; the rest resumes on load
MAX_BACKOFF = 30.0


def parse_track_doc(doc: str) -> tuple[str, dt.date] | None:
    m = TRACK_DOC.match(doc)
    if not m:
        return None
    try:
        return m.group(1), dt.date.fromisoformat(m.group(2))
    except ValueError:
        return None


class ElementQueue:
    """Decoded elements waiting to be materialized, by element index, from `start` (the room's
    materialized prefix) to `end`."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.chunks: list[Chunk] = []

    @property
    def end(self) -> int:
        return self.chunks[-1].end if self.chunks else self.start

    def add(self, chunk: Chunk) -> None:
        if chunk.first != self.end:  # the reader counts from where the queue starts: never happens
            log.error("track_chunk_out_of_order", expected=self.end, first=chunk.first, count=chunk.count)
            chunk = chunk.part(self.end, chunk.end)
            if chunk.first != self.end:
                return
        if chunk.count:
            self.chunks.append(chunk)

    def take(self, first: int, n: int) -> Chunk | None:
        """Elements [first, first + n), as far as they have arrived; None if none have."""
        stop = min(first + n, self.end)
        if first < self.start or first >= stop:
            return None
        return Chunk.join([c.part(first, stop) for c in self.chunks if c.first < stop and c.end > first])

    def drop_below(self, done: int) -> None:
        self.chunks = [c for c in self.chunks if c.end > done]
        self.start = max(self.start, done)


class TrackRoom:
    """Materialization state of one loaded track document."""

    def __init__(self, room, vehicle_id: uuid.UUID, day: dt.date, done: int) -> None:
        self.room = room
        self.key = room.name
        self.vehicle_id = vehicle_id
        self.day = day
        self.done = done  # elements materialized (durable or committed by this node)
        self.queue = ElementQueue(done)
        self.epoch = 0  # the reader's current opening of this room (chunks of earlier ones are stale)
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.task: asyncio.Task | None = None
        self.arrived: float | None = None  # time.monotonic() of the oldest update not yet materialized

    # -- what the track reader needs ---------------------------------------------------------------

    def state(self) -> bytes:
        return self.room.ydoc.get_update()

    def points(self) -> pycrdt.Array:
        return self.room.ydoc.get("points", type=pycrdt.Array)

    def restart_at(self, epoch: int) -> None:
        """The reader (re)opens the room: its chunks start again at `done`."""
        self.epoch = epoch
        self.queue = ElementQueue(self.done)

    def receive(self, chunk: Chunk) -> None:
        self.queue.add(chunk)
        if self.queue.end > self.done:
            self.idle.clear()
            self.wake.set()

    @property
    def backlog(self) -> int:
        return max(0, self.queue.end - self.done)


class TrackMaterializer(RoomHooks):
    def __init__(
        self,
        pipeline: Pipeline,
        registry,
        *,
        flush_seconds: float,
        batch_points: int,
        reader: InlineReader | ProcessReader | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.registry = registry
        self.reader = reader if reader is not None else InlineReader()
        self.flush_seconds = flush_seconds
        self.batch_points = batch_points
        self.rooms = None  # the RoomRegistry, for the fleet document (set by install)
        self._names: dict[uuid.UUID, str] = {}  # vehicle id -> name, for the fleet document

    # -- hooks ------------------------------------------------------------------------------------

    async def load(self, room) -> None:
        parsed = parse_track_doc(room.doc)
        if parsed is None:
            return
        segment, day = parsed
        vehicle_id = await self._vehicle(room.customer_id, segment)
        if vehicle_id is None:
            log.warning("track_doc_unknown_vehicle", customer_id=room.customer_id, room=room.doc)
            return
        db = await self.registry.for_customer(room.customer_id)
        limits = await self.pipeline.limits(room.customer_id)
        async with db.tenant(room.customer_id) as conn:
            totals = await feedback.read(conn, uuid.UUID(room.customer_id), room.doc, day, limits)
        done = totals.materialized
        state = TrackRoom(room, vehicle_id, day, done)
        room.set_state(state)
        await room.server_awareness(totals.state())  # what a joining phone sees first
        state.task = asyncio.ensure_future(self._work(state))
        state.task.set_name(f"materialize:{room.name}")
        await self.reader.open(state)

    async def change(self, room, update: bytes, origin) -> None:
        state: TrackRoom | None = room.peek_state(TrackRoom)
        if state is not None:
            if state.arrived is None:
                state.arrived = time.monotonic()
            self.reader.update(state, update)

    async def store(self, room) -> None:
        state: TrackRoom | None = room.peek_state(TrackRoom)
        if state is None or state.idle.is_set():
            return
        try:
            await asyncio.wait_for(state.idle.wait(), STORE_WAIT_SECONDS)
        except TimeoutError:
            log.warning("track_backlog_left_for_next_load", room=room.doc, pending=state.backlog)

    async def evict(self, room) -> None:
        state: TrackRoom | None = room.pop_state(TrackRoom)
        if state is not None:
            self.reader.close(state.key)
            if state.task is not None:
                state.task.cancel()

    async def stop(self) -> None:
        await self.reader.stop()

    # -- worker -----------------------------------------------------------------------------------

    async def _work(self, state: TrackRoom) -> None:
        """Batches in element order. While one batch is in the database the next one's CPU steps
        run (Pipeline.prepare), so Python and PostgreSQL work on the two cores at once."""
        backoff = 0.5
        while True:
            await state.wake.wait()
            state.wake.clear()
            if self.flush_seconds and state.backlog < self.batch_points:
                await asyncio.sleep(self.flush_seconds)  # let a burst gather into one batch (a full one goes now)
            run = await self._prepare(state, state.done)
            while run is not None:
                end = run.batch.first_index + run.batch.size
                commit = asyncio.ensure_future(self.pipeline.commit(run))
                upcoming = await self._prepare(state, end) if state.queue.end > end else None
                try:
                    await commit
                except asyncio.CancelledError:
                    commit.cancel()
                    raise
                except Exception:
                    log.exception("track_batch_failed", room=state.room.doc, points=run.batch.size, retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(MAX_BACKOFF, backoff * 2)
                    run = await self._prepare(state, state.done)
                    continue
                backoff = 0.5
                await self._publish(state, commit.result())
                state.done = max(state.done, end)
                state.queue.drop_below(state.done)
                if not state.backlog:
                    state.arrived = None
                if upcoming is not None and upcoming.batch.first_index == state.done:
                    run = upcoming
                else:
                    run = await self._prepare(state, state.done)
            state.idle.set()

    @staticmethod
    async def _publish(state: TrackRoom, outcome) -> None:
        """The document's totals after a batch, as the server's awareness state in its room."""
        if outcome.feedback is None:
            return
        try:
            await state.room.server_awareness(outcome.feedback.state())
        except Exception:
            log.exception("track_feedback_failed", room=state.room.doc)

    async def _prepare(self, state: TrackRoom, first: int):
        """The batch of elements from `first` (None, without waiting, when none have arrived)."""
        chunk = state.queue.take(first, self.batch_points)
        if chunk is None:
            return None
        batch = Batch(
            state.room.customer_id,
            state.vehicle_id,
            doc=state.room.doc,
            day=state.day,
            first_index=chunk.first,
            decoded=chunk,
            received=state.arrived,
        )
        backoff = 0.5
        while True:  # a failure here (the plan lookup while the database is away) must not end the worker
            try:
                return await self.pipeline.prepare(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("track_prepare_failed", room=state.room.doc, points=chunk.count, retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)

    async def _vehicle(self, customer_id: str, segment: str) -> uuid.UUID | None:
        try:
            vehicle_id, identifier = uuid.UUID(segment), None
        except ValueError:
            vehicle_id, identifier = None, segment
        db = await self.registry.for_customer(customer_id)
        async with db.tenant(customer_id) as conn:
            row = await vehicle_store.tracker(conn, customer_id, vehicle_id=vehicle_id, identifier=identifier)
            if row is None and vehicle_id is not None:  # an identifier that looks like a uuid
                row = await vehicle_store.tracker(conn, customer_id, identifier=segment)
        if row is None:
            return None
        self._names[row["id"]] = row["name"]
        return row["id"]

    async def on_vehicle_deleted(self, customer_id, vehicle_id, identifier="", **_ignored) -> None:
        """A deleted vehicle's track documents close their sockets (4403: the client stops); every
        node hears the event (Runtime.publish, CLUSTER_EVENTS)."""
        if self.rooms is None:
            return
        segments = {str(vehicle_id), str(identifier)} - {""}

        def of_vehicle(doc: str) -> bool:
            parsed = parse_track_doc(doc)
            return parsed is not None and parsed[0] in segments

        closed = self.rooms.close_where(str(customer_id), of_vehicle, FORBIDDEN, "vehicle deleted")
        self._names.pop(uuid.UUID(str(vehicle_id)), None)
        log.info("vehicle_deleted_connections_closed", customer_id=str(customer_id), connections=closed)

    # -- fleet document ---------------------------------------------------------------------------

    async def push_latest(self, customer_id: str, vehicle_id: uuid.UUID, fix: Point) -> None:
        """Write the vehicle's latest fix into the fleet document's `live` map (a normal update:
        relayed to peers, persisted, fanned out)."""
        if self.rooms is None:
            return
        name = self._names.get(vehicle_id)
        if name is None:
            db = await self.registry.for_customer(customer_id)
            async with db.tenant(customer_id) as conn:
                row = await vehicle_store.tracker(conn, customer_id, vehicle_id=vehicle_id)
            name = self._names[vehicle_id] = row["name"] if row else str(vehicle_id)
        room = await self.rooms.get(customer_id, FLEET_DOC)
        value = {**fix.as_json(), "name": name}

        def set_live(doc: pycrdt.Doc) -> None:
            doc.get("live", type=pycrdt.Map)[str(vehicle_id)] = value

        await room.write(set_live)
