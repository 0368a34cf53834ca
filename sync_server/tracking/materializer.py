"""The room hook that turns track documents into rows, and the fleet document's live map.

Track documents are `tracks/{vehicle}/{YYYY-MM-DD}` ({vehicle}: the vehicle's id, or its
vehicle_identifier) holding a Y.Array `points`. On load the hook reads the document's durable
progress and queues every element past it; then it observes the array, so each update costs only
its own new elements (no rescans: pycrdt reads ~10 us per indexed element). A worker task per room
batches what arrived (TRACKING_FLUSH_SECONDS, at most TRACKING_BATCH_POINTS per transaction) and runs
the pipeline off the hot path; a failed batch stays queued and is retried with backoff.

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
import uuid
from typing import Any

import pycrdt
import structlog

from storage import track_progress
from storage import vehicles as vehicle_store

from ..hooks import RoomHooks
from .pipeline import Batch, Pipeline
from .points import Point

log = structlog.get_logger("sync_server.tracking.materializer")

TRACK_DOC = re.compile(r"^tracks/([^/]{1,100})/(\d{4}-\d{2}-\d{2})$")
FLEET_DOC = "fleet"
KEY = "tracking"
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


class TrackRoom:
    """Materialization state of one loaded track document."""

    def __init__(self, room, vehicle_id: uuid.UUID, day: dt.date, done: int) -> None:
        self.room = room
        self.vehicle_id = vehicle_id
        self.day = day
        self.done = done  # elements materialized (durable or committed by this node)
        self.pending: list[Any] = []  # observed elements not yet materialized, in observed order
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.task: asyncio.Task | None = None
        self.subscription = None

    def observe(self, event) -> None:
        """Array observer on the Rust type itself (inside the update's transaction: only queue).
        pycrdt's own `observe` wraps every event and walks each value in Python looking for nested
        shared types, which track points never hold: half the cost of reading them (2 us a point)."""
        try:
            for change in event.delta:
                items = change.get("insert")
                if items:
                    self.pending.extend(items)
                elif "delete" in change:
                    log.warning("track_points_deleted", room=self.room.doc, deleted=change["delete"])
            if self.pending:
                self.idle.clear()
                self.wake.set()
        except Exception:  # never raise into the CRDT engine
            log.exception("track_observer_failed", room=self.room.doc)


class TrackMaterializer(RoomHooks):
    def __init__(self, pipeline: Pipeline, registry, *, flush_seconds: float, batch_points: int) -> None:
        self.pipeline = pipeline
        self.registry = registry
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
        async with db.tenant(room.customer_id) as conn:
            done = await track_progress.elements(conn, uuid.UUID(room.customer_id), room.doc)
        state = TrackRoom(room, vehicle_id, day, done)
        points = room.ydoc.get("points", type=pycrdt.Array)
        if len(points) > done:
            state.pending = points.to_py()[done:]
            state.idle.clear()
            state.wake.set()
        state.subscription = points.integrated.observe(state.observe)
        state.task = asyncio.ensure_future(self._work(state))
        state.task.set_name(f"materialize:{room.name}")
        room.extra[KEY] = state

    async def store(self, room) -> None:
        state: TrackRoom | None = room.extra.get(KEY)
        if state is None or state.idle.is_set():
            return
        try:
            await asyncio.wait_for(state.idle.wait(), STORE_WAIT_SECONDS)
        except asyncio.TimeoutError:
            log.warning("track_backlog_left_for_next_load", room=room.doc, pending=len(state.pending))

    async def evict(self, room) -> None:
        state: TrackRoom | None = room.extra.pop(KEY, None)
        if state is not None:
            if state.task is not None:
                state.task.cancel()
            if state.subscription is not None:
                state.subscription.drop()

    # -- worker -----------------------------------------------------------------------------------

    async def _work(self, state: TrackRoom) -> None:
        """Batches in observed order. While one batch is in the database the next one's CPU steps
        run (Pipeline.prepare), so Python and PostgreSQL work on the two cores at once."""
        backoff = 0.5
        while True:
            await state.wake.wait()
            state.wake.clear()
            if self.flush_seconds and len(state.pending) < self.batch_points:
                await asyncio.sleep(self.flush_seconds)  # let a burst gather into one batch (a full one goes now)
            offset = 0  # pending[:offset] is prepared or committing
            run = await self._prepare(state, offset)
            while run is not None:
                size = len(run.batch.raw)
                commit = asyncio.ensure_future(self.pipeline.commit(run))
                upcoming = await self._prepare(state, offset + size) if len(state.pending) > offset + size else None
                try:
                    await commit
                except asyncio.CancelledError:
                    commit.cancel()
                    raise
                except Exception:
                    log.exception("track_batch_failed", room=state.room.doc, points=size, retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(MAX_BACKOFF, backoff * 2)
                    run = await self._prepare(state, 0)
                    continue
                backoff = 0.5
                del state.pending[:size]
                state.done += size
                run = upcoming
                if run is not None:  # its indices were computed before `done` moved: same values
                    offset = 0
                elif state.pending:
                    run = await self._prepare(state, 0)
            state.idle.set()

    async def _prepare(self, state: TrackRoom, offset: int):
        raw = state.pending[offset:offset + self.batch_points]
        if not raw:
            return None
        batch = Batch(state.room.customer_id, state.vehicle_id, raw, doc=state.room.doc, day=state.day,
                      first_index=state.done + offset)
        backoff = 0.5
        while True:  # a failure here (the plan lookup while the database is away) must not end the worker
            try:
                return await self.pipeline.prepare(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("track_prepare_failed", room=state.room.doc, points=len(raw), retry_in=backoff)
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
        ydoc = room.ydoc
        live = ydoc.get("live", type=pycrdt.Map)
        before = ydoc.get_state()
        value = {**fix.as_json(), "name": name}
        with ydoc.transaction():
            live[str(vehicle_id)] = value
        await room.apply(ydoc.get_update(before))
