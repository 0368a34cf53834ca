"""The tracking pipeline: GPS fixes from track documents and trackers become rows.

Its steps and their order are written down here and nowhere else (Traccar's ProcessingHandler is
the model). The first three need nothing but the batch; the rest run in ONE tenant transaction under
the customer's quota lock, so rows, geofence events, usage counters and the document's progress
commit together or not at all: a crash at any point leaves either all of a batch or none of it, and
the next run resumes from the durable progress (exactly once).

    decode    raw JSON -> Point (malformed ones rejected)                       points.decode
    validate  ranges, (0,0), future, outside the doc's day, too old, accuracy   filters.check
    order     by fix time (the vehicle's sequence)
    locate    the fixes as columns; which (cached) geofences hold each; CPU work done here
              runs while the previous batch is still in the database
    -- transaction, customer's quota lock held --
    resume    drop elements a previous run already materialized                 track_progress
    filter    duplicates and implied-speed jumps against the stored neighbours  filters.sequence
    quota     the plan's gps_points_per_day, per day of the fix                 quota.cut
    geofence  enter/exit events over the batch's window, backfills included     geofences.transitions
    store     COPY into staging, INSERT ... ON CONFLICT DO NOTHING              storage.positions
    latest    vehicle_positions_latest moves forward only                       storage.positions
    usage     points and rejections per reason per day; the document progress  storage.usage_metrics
"""
from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

import asyncpg
import numpy as np
import structlog

from storage import geofence_events as event_store
from storage import partitions
from storage import positions as position_store
from storage import geofences as geofence_store
from storage import track_progress
from storage import usage as usage_store
from storage.registry import DatabaseRegistry

from .. import plans
from . import filters, quota
from .geofences import Event, GeofenceSet, shape_from_row, transitions
from .points import DAY_MS, MALFORMED, Point, columns, day_of, decode, from_record, ms_from_datetime

log = structlog.get_logger("sync_server.tracking")

LIMITS_TTL = 30.0  # seconds a customer's plan limits are cached
_EMPTY: frozenset = frozenset()


@dataclass
class Batch:
    """Raw points of one vehicle from one source. For a track document, raw[i] is element
    first_index + i of its `points` array."""

    customer_id: str
    vehicle_id: uuid.UUID
    raw: Sequence[Any]
    source: str = "doc"  # "doc" | "osmand"
    doc: str | None = None
    day: dt.date | None = None
    first_index: int = 0


@dataclass
class Outcome:
    stored: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)  # newly recorded geofence events
    latest: Point | None = None  # the vehicle's new latest fix, when this batch moved it forward
    skipped: int = 0  # elements a previous run had already materialized


class Run:
    """One batch on its way through the steps."""

    def __init__(self, batch: Batch, limits: plans.Limits, rules: filters.Rules, now_ms: int) -> None:
        self.batch = batch
        self.customer_uuid = uuid.UUID(str(batch.customer_id))
        self.limits = limits
        self.rules = rules
        self.now_ms = now_ms
        self.points: list[Point] = []
        self.fixes: position_store.Fixes | None = None  # the points as columns (locate); Point.pos indexes it
        self.early_rejections: list[tuple[int, int, str]] = []  # (element index, day, reason) before resume
        self.rejected: dict[tuple[int, str], int] = {}  # (day, reason) -> count
        self.conn: asyncpg.Connection | None = None
        self.fences: GeofenceSet | None = None
        self.cached_fences: GeofenceSet | None = None  # the pipeline's copy when the batch started
        self.located_with: Any = None  # fingerprint of the set `locate` used
        self.before: Point | None = None  # the stored fix just before the batch's span
        self.stored_in_span: list[Point] = []
        self.after: Point | None = None  # the first stored fix after the span
        self.outcome = Outcome()

    def reject(self, idx: int, day: int, reason: str) -> None:
        self.early_rejections.append((idx, day, reason))


Step = Callable[[Run], Awaitable[None]]


# --- steps without the database -------------------------------------------------------------


async def decode_step(run: Run) -> None:
    today = run.now_ms // DAY_MS
    points = []
    append = points.append
    for i, raw in enumerate(run.batch.raw, start=run.batch.first_index):
        p = decode(raw)
        if p.__class__ is Point:
            p.idx = i
            append(p)
        else:
            run.reject(i, today, MALFORMED)
    run.points = points


async def validate_step(run: Run) -> None:
    rules = run.rules
    oldest = run.now_ms - run.limits.retention_days * DAY_MS
    if run.batch.day is not None:
        window = filters.day_window((run.batch.day - dt.date(1970, 1, 1)).days, run.now_ms, oldest, rules)
    else:
        window = filters.Window(run.now_ms, oldest)
    check = filters.check
    kept = []
    for p in run.points:
        reason = check(p, window, rules)
        if reason is None:
            kept.append(p)
        else:
            run.reject(p.idx, p.ms // DAY_MS, reason)
    run.points = kept


async def order_step(run: Run) -> None:
    run.points.sort(key=_by_time)


async def locate_step(run: Run) -> None:
    run.fixes = columns(run.points)  # the rows COPY will carry (the transaction picks the kept ones)
    for pos, p in enumerate(run.points):
        p.pos = pos
    fences = run.cached_fences
    if fences is not None and fences:
        for p, inside in zip(run.points, fences.inside_all(run.fixes.lat, run.fixes.lng)):
            p.inside = inside
        run.located_with = fences.fingerprint


def _by_time(p: Point) -> int:
    return p.ms


# --- steps inside the transaction -------------------------------------------------------------


async def resume_step(run: Run) -> None:
    batch = run.batch
    done = 0
    if batch.doc is not None:
        done = await track_progress.elements(run.conn, run.customer_uuid, batch.doc)
    if done > batch.first_index:
        run.outcome.skipped = min(done, batch.first_index + len(batch.raw)) - batch.first_index
        run.points = [p for p in run.points if p.idx >= done]
    for idx, day, reason in run.early_rejections:
        if idx >= done or idx < 0:
            run.rejected[(day, reason)] = run.rejected.get((day, reason), 0) + 1


async def filter_step(run: Run) -> None:
    if not run.points:
        return
    conn, cid, vid = run.conn, run.customer_uuid, run.batch.vehicle_id
    first, last = run.points[0], run.points[-1]
    row = await position_store.before(conn, cid, vid, first.time)
    run.before = from_record(row) if row else None
    run.stored_in_span = [from_record(r) for r in await position_store.between(conn, cid, vid, first.time, last.time)]
    row = await position_store.after(conn, cid, vid, last.time)
    run.after = from_record(row) if row else None
    run.points = filters.sequence(run.points, run.stored_in_span, run.before, run.rules, run.rejected)


async def quota_step(run: Run) -> None:
    if not run.points:
        return
    days = range(run.points[0].ms // DAY_MS, run.points[-1].ms // DAY_MS + 1)  # points are in time order
    used = await usage_store.values(run.conn, run.customer_uuid, quota.POINTS_METRIC, [day_of(d * DAY_MS) for d in days])
    used_by_number = {(d - dt.date(1970, 1, 1)).days: n for d, n in used.items()}
    run.points = quota.cut(run.points, run.limits.gps_points_per_day, used_by_number, run.rejected)


async def geofence_step(run: Run) -> None:
    fences = run.fences
    if not run.points or not fences:
        return
    if run.located_with != fences.fingerprint:  # geofences changed since `locate`
        for p in run.points:
            p.inside = None
    before = fences.inside(run.before.lat, run.before.lng) if run.before else _EMPTY
    sequence = _merge(run.stored_in_span, run.points)
    if run.after is not None:
        sequence.append(run.after)
    wanted = transitions(fences, before, sequence)
    first = run.points[0].time
    last = sequence[-1].time
    conn, cid, vid = run.conn, run.customer_uuid, run.batch.vehicle_id
    existing = await event_store.in_window(conn, cid, vid, first, last)
    wanted_keys = {e.key for e in wanted}
    existing_keys = set()
    stale = []
    for row in existing:
        key = (str(row["geofence_id"]), ms_from_datetime(row["time"]), row["event"])
        existing_keys.add(key)
        if key not in wanted_keys:
            stale.append(row["id"])
    if stale:
        await event_store.delete(conn, cid, stale)
    new = [e for e in wanted if e.key not in existing_keys]
    if new:
        await event_store.insert(conn, cid, vid, [e.geofence_id for e in new], [e.event for e in new],
                                 [Point(e.ms, e.lat, e.lng).time for e in new], [e.lat for e in new],
                                 [e.lng for e in new])
    run.outcome.events = new


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


def _merge(stored: list[Point], new: list[Point]) -> list[Point]:
    if not stored:
        return list(new)
    return sorted([*stored, *new], key=_by_time)


async def store_step(run: Run) -> None:
    if not run.points:
        return
    kept = np.fromiter([p.pos for p in run.points], np.intp, len(run.points))
    fixes = run.fixes.take(kept)
    inserted = await position_store.stage_and_merge(run.conn, run.customer_uuid, run.batch.vehicle_id,
                                                    run.batch.source, fixes)
    run.outcome.stored = inserted
    if inserted < len(kept):  # only possible without the lock (a concurrent writer got there first)
        key = (run.points[-1].ms // DAY_MS, filters.DUPLICATE)
        run.rejected[key] = run.rejected.get(key, 0) + len(kept) - inserted


async def latest_step(run: Run) -> None:
    if not run.points:
        return
    p = run.points[-1]
    moved = await position_store.upsert_latest(run.conn, run.customer_uuid, run.batch.vehicle_id,
                                               (p.time, p.lat, p.lng, p.speed, p.heading, p.accuracy, p.alt))
    if moved:
        run.outcome.latest = p


async def usage_step(run: Run) -> None:
    per_day: dict[int, int] = {}
    for p in run.points:
        day = p.ms // DAY_MS
        per_day[day] = per_day.get(day, 0) + 1
    counts = [(day_of(d * DAY_MS), quota.POINTS_METRIC, n) for d, n in per_day.items()]
    counts += [(day_of(d * DAY_MS), quota.rejected_metric(reason), n) for (d, reason), n in run.rejected.items()]
    await usage_store.add(run.conn, run.customer_uuid, counts)
    batch = run.batch
    if batch.doc is not None:
        await track_progress.advance(run.conn, run.customer_uuid, batch.doc, batch.vehicle_id,
                                     batch.first_index + len(batch.raw))
    rejected: dict[str, int] = {}
    for (_, reason), n in run.rejected.items():
        rejected[reason] = rejected.get(reason, 0) + n
    run.outcome.rejected = rejected


BEFORE_TRANSACTION: tuple[tuple[str, Step], ...] = (
    ("decode", decode_step),
    ("validate", validate_step),
    ("order", order_step),
    ("locate", locate_step),
)
IN_TRANSACTION: tuple[tuple[str, Step], ...] = (
    ("resume", resume_step),
    ("filter", filter_step),
    ("quota", quota_step),
    ("geofence", geofence_step),
    ("store", store_step),
    ("latest", latest_step),
    ("usage", usage_step),
)


class Pipeline:
    """Runs batches through the steps; caches what every batch of a customer needs (plan limits,
    geofences, which day partitions exist)."""

    def __init__(self, registry: DatabaseRegistry, rules: filters.Rules | None = None) -> None:
        self.registry = registry
        self.rules = rules or filters.Rules()
        self._limits: dict[str, tuple[float, plans.Limits]] = {}
        self._fences: dict[str, GeofenceSet] = {}
        self._partitions: dict[str, set[int]] = {}  # database name -> day numbers known to exist
        self._latest_listeners: list[Callable[[str, uuid.UUID, Point], Awaitable[None]]] = []

    def on_latest(self, listener: Callable[[str, uuid.UUID, Point], Awaitable[None]]) -> None:
        """Called (customer_id, vehicle_id, fix) after a batch moved a vehicle's latest position."""
        self._latest_listeners.append(listener)

    async def limits(self, customer_id: str) -> plans.Limits:
        key = str(customer_id)
        cached = self._limits.get(key)
        if cached is not None and time.monotonic() - cached[0] < LIMITS_TTL:
            return cached[1]
        limits = await plans.current_limits(self.registry.shared, key)
        self._limits[key] = (time.monotonic(), limits)
        return limits

    def forget(self, customer_id: str) -> None:
        """Drop cached limits and geofences (after a plan or geofence change on this node)."""
        self._limits.pop(str(customer_id), None)
        self._fences.pop(str(customer_id), None)

    async def _geofences(self, conn: asyncpg.Connection, customer_id: uuid.UUID) -> GeofenceSet:
        key = str(customer_id)
        fingerprint = await geofence_store.active_fingerprint(conn, customer_id)
        cached = self._fences.get(key)
        if cached is not None and cached.fingerprint == fingerprint:
            return cached
        shapes = []
        for row in await geofence_store.active_shapes(conn, customer_id):
            try:
                shapes.append(shape_from_row(row))
            except (ValueError, TypeError, KeyError, IndexError):
                log.warning("geofence_unusable", geofence_id=str(row["id"]))
        fences = GeofenceSet(shapes, fingerprint)
        self._fences[key] = fences
        return fences

    async def _ensure_partitions(self, db, days: set[int]) -> None:
        known = self._partitions.setdefault(db.name, set())
        missing = sorted(days - known)
        while missing:
            first = last = missing.pop(0)
            while missing and missing[0] == last + 1:
                last = missing.pop(0)
            await partitions.ensure(db, day_of(first * DAY_MS), day_of(last * DAY_MS))
            known.update(range(first, last + 1))

    async def process(self, batch: Batch, now: dt.datetime | None = None) -> Outcome:
        return await self.commit(await self.prepare(batch, now))

    async def prepare(self, batch: Batch, now: dt.datetime | None = None) -> Run:
        """The steps before the transaction (CPU only, plus cached plan limits)."""
        now_ms = ms_from_datetime(now) if now else int(time.time() * 1000)
        run = Run(batch, await self.limits(batch.customer_id), self.rules, now_ms)
        run.cached_fences = self._fences.get(str(batch.customer_id))
        for _, step in BEFORE_TRANSACTION:
            await step(run)
            await asyncio.sleep(0)  # each step is tens of ms on a large batch: let commits in flight proceed
        return run

    async def commit(self, run: Run) -> Outcome:
        """The steps in the transaction; returns when the batch is committed."""
        started = time.perf_counter()
        timings: dict[str, float] = {}  # where the time goes, in the batch's log line
        batch, now_ms = run.batch, run.now_ms
        db = await self.registry.for_customer(batch.customer_id)
        days = {p.ms // DAY_MS for p in run.points} if run.points else set()
        days.update(day for _, day, _ in run.early_rejections)
        await self._ensure_partitions(db, days or {now_ms // DAY_MS})
        async with db.tenant(run.customer_uuid) as conn:
            run.conn = conn
            await usage_store.lock_quota(conn, run.customer_uuid, "gps_points_per_day")
            if batch.doc is not None:  # replayable from the document; tracker posts wait for the disk
                await position_store.commit_without_waiting_for_flush(conn)
            run.fences = await self._geofences(conn, run.customer_uuid)
            timings["lock"] = _ms(started)
            for name, step in IN_TRANSACTION:
                step_started = time.perf_counter()
                await step(run)
                timings[name] = _ms(step_started)
            commit_started = time.perf_counter()
        timings["commit"] = _ms(commit_started)
        run.conn = None
        outcome = run.outcome
        if outcome.latest is not None:
            for listener in self._latest_listeners:
                try:
                    await listener(str(batch.customer_id), batch.vehicle_id, outcome.latest)
                except Exception:
                    log.exception("latest_listener_failed")
        log.info("tracking_batch", customer_id=str(batch.customer_id), vehicle_id=str(batch.vehicle_id),
                 source=batch.source, doc=batch.doc, points=len(batch.raw), stored=outcome.stored,
                 skipped=outcome.skipped, rejected=outcome.rejected, events=len(outcome.events),
                 ms=_ms(started), step_ms=timings)
        return outcome
