"""The tracking pipeline: GPS fixes from track documents and trackers become rows.

Its steps and their order are written down here and nowhere else (Traccar's ProcessingHandler is
the model). The first four need nothing but the batch; the rest run in ONE tenant transaction, so
rows, geofence events, usage counters and the document's progress commit together or not at all: a
crash at any point leaves either all of a batch or none of it, and the next run resumes from the
durable progress (exactly once).

    decode    raw JSON -> columns (malformed ones rejected)                     points.decode_all
              (track documents arrive decoded: the track reader did it)
    validate  ranges, (0,0), future, outside the doc's day, too old, accuracy   filters.check_all
    order     by fix time (the vehicle's sequence)
    locate    which (cached) geofences hold each fix; CPU work done here
              runs while the previous batch is still in the database
    -- transaction, the vehicle's track lock held --
    resume    drop elements a previous run already materialized                 track_progress
    filter    duplicates and implied-speed jumps against the stored neighbours  filters.sequence
    quota     the plan's gps_points_per_day, per day of the fix (phase 1)       quota.cut
    geofence  enter/exit events over the batch's window, backfills included     geofences.transitions
              (new and retracted ones announced to webhooks: the outbox)        announce, webhooks.outbox
    store     COPY into staging, INSERT ... ON CONFLICT DO NOTHING              storage.positions
    latest    vehicle_positions_latest moves forward only                       storage.positions
    confirm   the quota's phase 2: the allowance counted on is still there      quota.fits
    events    overspeed, trips/stops, offline/online over the batch's window    fleet_events.recompute
              (backfills recompute, move and retract), published in the transaction
    usage     points and rejections per reason per day; the document progress  storage.usage_metrics

Locks: everything about one vehicle (its neighbours, events, latest fix, progress) is serialised by
the vehicle's track lock, so the vehicles of one customer materialize in parallel. The quota is the
one thing shared by a customer's vehicles: it is counted under the customer's quota lock. When the
batch clearly fits the day's allowance, `quota` (phase 1) only checks, and `confirm` (phase 2) takes
the quota lock at the end and re-reads the allowance (the lock is then held only for the last
statements); if a concurrent batch used the room meanwhile, the transaction rolls back to the
savepoint taken before the QUOTA_PHASES steps and runs them again with the quota lock held from the
start (the allowance is cut exactly, as always). The limits come from the node's one plan-limit
service (sync_server.domain.billing.plans.PlanLimits: one cache, dropped on "plan_changed").
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np
import structlog

from storage import fleet_events as fleet_event_store
from storage import geofence_events as event_store
from storage import geofences as geofence_store
from storage import partitions, track_progress
from storage import positions as position_store
from storage import usage as usage_store
from storage.positions import Fixes
from storage.registry import DatabaseRegistry
from sync_server.domain.billing import plans
from sync_server.domain.tracking import announce, feedback, filters, fleet_events, quota
from sync_server.domain.tracking.geofences import (
    Event,
    GeofenceSet,
    shape_from_row,
    transitions,
)
from sync_server.domain.tracking.points import (
    DAY_MS,
    MALFORMED,
    Chunk,
    Point,
    columns,
    day_number,
    day_of,
    decode_chunk,
    from_record,
    ms_from_datetime,
    point_at,
    time_of,
)
from sync_server.domain.webhooks import outbox

log = structlog.get_logger("sync_server.domain.tracking")

BULK_POINTS = 1_000  # a batch this large takes a bulk slot (Pipeline: bulk_concurrency)
QUOTA_HEADROOM = 0.5  # a batch that leaves this share of the day's allowance unused skips the wait


@dataclass
class Batch:
    """Raw points of one vehicle from one source. For a track document, raw[i] is element
    first_index + i of its `points` array, or the elements come already decoded (`decoded`: the
    track reader decodes them beside the event loop)."""

    customer_id: str
    vehicle_id: uuid.UUID
    raw: Sequence[Any] = ()
    source: str = "doc"  # "doc" | "osmand"
    doc: str | None = None
    day: dt.date | None = None
    first_index: int = 0
    decoded: Chunk | None = None
    received: float | None = None  # time.monotonic() when its oldest fix reached the node, if known

    @property
    def size(self) -> int:
        """Elements in the batch (decoded or not)."""
        return self.decoded.count if self.decoded is not None else len(self.raw)


@dataclass
class Outcome:
    stored: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)  # newly recorded geofence events
    fleet: fleet_events.Changes = field(default_factory=fleet_events.Changes)  # other events, retractions
    latest: Point | None = None  # the vehicle's new latest fix, when this batch moved it forward
    skipped: int = 0  # elements a previous run had already materialized
    feedback: Any = None  # a track document's totals after this batch (feedback.Totals)


class Run:
    """One batch on its way through the steps. Its fixes travel as columns (`fixes`, with `index`:
    each row's element index, and `inside`: each row's geofence set once located); a step that drops
    fixes calls `keep` so the three stay aligned."""

    def __init__(self, batch: Batch, limits: plans.Limits, rules: filters.Rules, now_ms: int) -> None:
        self.batch = batch
        self.customer_uuid = uuid.UUID(str(batch.customer_id))
        self.limits = limits
        self.rules = rules
        self.now_ms = now_ms
        self.fixes: Fixes = columns([])
        self.index: np.ndarray = np.zeros(0, dtype=np.int64)
        self.inside: np.ndarray | None = None  # each row's geofence mask (GeofenceSet.masks_all)
        self.early: list[tuple[np.ndarray, np.ndarray, str]] = []  # (element indices, days, reason) before resume
        self.rejected: dict[tuple[int, str], int] = {}  # (day, reason) -> count
        self.conn: asyncpg.Connection | None = None
        self.fences: GeofenceSet | None = None
        self.zones: fleet_events.Zones | None = None  # speed-limited geofences
        self.cached_fences: GeofenceSet | None = None  # the pipeline's copy when the batch started
        self.located_with: Any = None  # fingerprint of the set `locate` used
        self.before: Point | None = None  # the stored fix just before the batch's span
        self.stored_in_span: list[Point] = []
        self.after: Point | None = None  # the first stored fix after the span
        self.outcome = Outcome()
        self.quota_locked = False  # the customer's quota lock is held by this transaction

    def __len__(self) -> int:
        return len(self.index)

    def keep(self, mask: np.ndarray) -> None:
        self.fixes = self.fixes.take(mask)
        self.index = self.index[mask]
        if self.inside is not None:
            self.inside = self.inside[mask]

    def reject_early(self, mask: np.ndarray, reason: str) -> None:
        """Fixes rejected before `resume` (counted only if not materialized by an earlier run)."""
        self.early.append((self.index[mask], self.fixes.ms[mask] // DAY_MS, reason))

    def reject(self, days: np.ndarray, reason: str) -> None:
        for day, n in zip(*(a.tolist() for a in np.unique(days, return_counts=True))):
            key = (day, reason)
            self.rejected[key] = self.rejected.get(key, 0) + n


Step = Callable[[Run], Awaitable[None]]


# --- steps without the database -------------------------------------------------------------


def decode_step(run: Run) -> None:
    batch = run.batch
    chunk = batch.decoded if batch.decoded is not None else decode_chunk(batch.raw, batch.first_index)
    run.fixes, run.index, malformed = chunk.fixes, chunk.index, chunk.malformed
    if malformed:  # counted on the day the batch runs: a malformed fix has no time of its own
        run.early.append(
            (np.array(malformed, dtype=np.int64), np.full(len(malformed), run.now_ms // DAY_MS), MALFORMED)
        )


def validate_step(run: Run) -> None:
    oldest = run.now_ms - run.limits.retention_days * DAY_MS
    if run.batch.day is not None:
        window = filters.day_window(day_number(run.batch.day), run.now_ms, oldest, run.rules)
    else:
        window = filters.Window(run.now_ms, oldest)
    failed = filters.check_all(run.fixes, window, run.rules)
    if (failed >= 0).any():
        for code, reason in enumerate(filters.CHECKS):
            mask = failed == code
            if mask.any():
                run.reject_early(mask, reason)
        run.keep(failed < 0)


def order_step(run: Run) -> None:
    ms = run.fixes.ms
    if len(ms) > 1 and (ms[1:] < ms[:-1]).any():
        run.keep(np.argsort(ms, kind="stable"))


def locate_step(run: Run) -> None:
    fences = run.cached_fences
    if fences is not None and fences:
        run.inside = fences.masks_all(run.fixes.lat, run.fixes.lng)
        run.located_with = fences.fingerprint


# --- steps inside the transaction -------------------------------------------------------------


async def resume_step(run: Run) -> None:
    batch = run.batch
    done = 0
    if batch.doc is not None:
        done = await track_progress.elements(run.conn, run.customer_uuid, batch.doc)
    if done > batch.first_index:
        run.outcome.skipped = min(done, batch.first_index + batch.size) - batch.first_index
        run.keep(run.index >= done)
    for index, days, reason in run.early:
        run.reject(days[(index >= done) | (index < 0)], reason)


async def filter_step(run: Run) -> None:
    if not len(run):
        return
    conn, cid, vid = run.conn, run.customer_uuid, run.batch.vehicle_id
    first, last = time_of(int(run.fixes.ms[0])), time_of(int(run.fixes.ms[-1]))
    row = await position_store.before(conn, cid, vid, first)
    run.before = from_record(row) if row else None
    run.stored_in_span = [from_record(r) for r in await position_store.between(conn, cid, vid, first, last)]
    row = await position_store.after(conn, cid, vid, last)
    run.after = from_record(row) if row else None
    verdict = filters.sequence(run.fixes, run.stored_in_span, run.before, run.rules)
    accepted = verdict == ""
    if not accepted.all():
        for reason in (filters.DUPLICATE, filters.JUMP):
            run.reject(run.fixes.ms[verdict == reason] // DAY_MS, reason)
        run.keep(accepted)


async def quota_step(run: Run) -> None:
    if not len(run):
        return
    if not run.quota_locked:  # optimistic: the whole batch fits what the day has left, without waiting
        if quota.fits(run.fixes.ms, run.limits.gps_points_per_day, await _used_by_day(run), QUOTA_HEADROOM):
            return
        await _lock_quota(run)
    keep = quota.cut(run.fixes.ms, run.limits.gps_points_per_day, await _used_by_day(run))
    if not keep.all():
        run.reject(run.fixes.ms[~keep] // DAY_MS, quota.QUOTA_EXCEEDED)
        for day in np.unique(run.fixes.ms[~keep] // DAY_MS).tolist():
            recorded = await quota.reached(run.conn, run.customer_uuid, int(day), run.limits.gps_points_per_day)
            if recorded is not None:
                run.outcome.fleet.added.append(recorded)
        run.keep(keep)


async def _lock_quota(run: Run) -> None:
    await plans.PlanLimits.lock_quota(run.conn, run.customer_uuid, "gps_points_per_day")
    run.quota_locked = True


async def _used_by_day(run: Run) -> dict[int, int]:
    days = range(int(run.fixes.ms[0]) // DAY_MS, int(run.fixes.ms[-1]) // DAY_MS + 1)  # fixes are in time order
    used = await usage_store.values(
        run.conn, run.customer_uuid, quota.POINTS_METRIC, [day_of(d * DAY_MS) for d in days]
    )
    return {day_number(d): n for d, n in used.items()}


class QuotaRace(Exception):
    """A concurrent batch of the same customer used the allowance this batch counted on."""


async def geofence_step(run: Run) -> None:
    fences = run.fences
    if not len(run) or not fences:
        return
    fixes = run.fixes
    inside = run.inside if run.located_with == fences.fingerprint else None  # else: geofences changed since
    if inside is None:
        inside = fences.masks_all(fixes.lat, fixes.lng)
    before = fences.masks_all(np.array([run.before.lat]), np.array([run.before.lng]))[0] if run.before else frozenset()
    ms, lat, lng = fixes.ms, fixes.lat, fixes.lng
    others = run.stored_in_span + ([run.after] if run.after is not None else [])
    if others:  # the window's stored fixes join the sequence (a backfill, or the fix after the batch)
        o_lat = np.array([p.lat for p in others])
        o_lng = np.array([p.lng for p in others])
        o_inside = fences.masks_all(o_lat, o_lng)
        ms = np.concatenate((np.array([p.ms for p in others], dtype=np.int64), ms))
        order = np.argsort(ms, kind="stable")
        ms, lat, lng = ms[order], np.concatenate((o_lat, lat))[order], np.concatenate((o_lng, lng))[order]
        inside = np.concatenate((o_inside, inside))[order]
    wanted = transitions(fences, before, ms, lat, lng, inside)
    first, last = time_of(int(fixes.ms[0])), time_of(int(ms[-1]))
    conn, cid, vid = run.conn, run.customer_uuid, run.batch.vehicle_id
    existing = await event_store.in_window(conn, cid, vid, first, last)
    wanted_keys = {e.key for e in wanted}
    existing_keys = set()
    stale = []
    for row in existing:
        key = (str(row["geofence_id"]), ms_from_datetime(row["time"]), row["event"])
        existing_keys.add(key)
        if key not in wanted_keys:
            stale.append(row)
    if stale:
        await event_store.delete(conn, cid, [row["id"] for row in stale])
    new = [e for e in wanted if e.key not in existing_keys]
    if new:
        present = await event_store.lock_parents(conn, cid, vid, {e.geofence_id for e in new})
        new = [e for e in new if e.geofence_id in present]  # a geofence deleted meanwhile takes its events along
    if new:
        recorded = await event_store.insert(
            conn,
            cid,
            vid,
            [e.geofence_id for e in new],
            [e.event for e in new],
            [time_of(e.ms) for e in new],
            [e.lat for e in new],
            [e.lng for e in new],
        )
    else:
        recorded = []
    if stale or recorded:  # announced in this transaction: committed (or rolled back) with the events
        await outbox.publish(conn, cid, announce.geofence_messages(vid, recorded, stale))
    run.outcome.events = new


def _before_transaction(run: Run) -> None:
    for _, step in BEFORE_TRANSACTION:
        step(run)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


async def store_step(run: Run) -> None:
    if not len(run):
        return
    inserted = await position_store.stage_and_merge(
        run.conn, run.customer_uuid, run.batch.vehicle_id, run.batch.source, run.fixes
    )
    run.outcome.stored = inserted
    if inserted < len(run):  # only possible without the lock (a concurrent writer got there first)
        key = (int(run.fixes.ms[-1]) // DAY_MS, filters.DUPLICATE)
        run.rejected[key] = run.rejected.get(key, 0) + len(run) - inserted


async def latest_step(run: Run) -> None:
    if not len(run):
        return
    p = point_at(run.fixes, len(run) - 1)
    moved = await position_store.upsert_latest(
        run.conn, run.customer_uuid, run.batch.vehicle_id, (p.time, p.lat, p.lng, p.speed, p.heading, p.accuracy, p.alt)
    )
    if moved:
        run.outcome.latest = p


async def confirm_quota_step(run: Run) -> None:
    """Phase 2 of the quota: when `quota_step` only checked, take the customer's quota lock now and
    raise QuotaRace if a concurrent batch used the allowance meanwhile (the pipeline then reruns
    QUOTA_PHASES with the lock held; `quota_step` then cuts exactly and this step does nothing)."""
    if run.quota_locked:
        return
    await _lock_quota(run)
    if len(run) and not quota.fits(run.fixes.ms, run.limits.gps_points_per_day, await _used_by_day(run), 0):
        raise QuotaRace()


async def events_step(run: Run) -> None:
    """The fleet events of the batch's window (fleet_events.recompute), then everything recorded or
    retracted by this batch handed to delivery in this transaction."""
    changes = run.outcome.fleet
    if len(run):
        await _fleet_events(run, changes)
    if changes.added or changes.retracted:  # announced in this transaction, with the rows
        await outbox.publish(run.conn, run.customer_uuid, announce.fleet_messages(changes))


async def _fleet_events(run: Run, changes: fleet_events.Changes) -> None:
    conn, cid, vid = run.conn, run.customer_uuid, run.batch.vehicle_id
    ctx = await fleet_events.context(conn, cid, vid, run.zones)
    if not ctx.vehicle_exists:  # deleted meanwhile: its events, trips and stops are gone with it
        return
    fixes = run.fixes
    batch = (fixes.ms, fixes.lat, fixes.lng, fixes.speed) if run.outcome.stored == len(run) else None
    found = await fleet_events.recompute(conn, cid, vid, int(fixes.ms[0]), int(fixes.ms[-1]), run.now_ms, ctx, batch)
    changes.added += found.added
    changes.retracted += found.retracted


async def usage_step(run: Run) -> None:
    counts = [(day_of(d * DAY_MS), quota.POINTS_METRIC, n) for d, n in quota.per_day(run.fixes.ms).items()]
    counts += [(day_of(d * DAY_MS), quota.rejected_metric(reason), n) for (d, reason), n in run.rejected.items()]
    await usage_store.add(run.conn, run.customer_uuid, counts)
    batch = run.batch
    rejected: dict[str, int] = {}
    for (_, reason), n in run.rejected.items():
        rejected[reason] = rejected.get(reason, 0) + n
    run.outcome.rejected = rejected
    if batch.doc is not None:
        row = await track_progress.advance(
            run.conn,
            run.customer_uuid,
            batch.doc,
            batch.vehicle_id,
            batch.first_index + batch.size,
            stored=run.outcome.stored,
            rejected=rejected,
        )
        run.outcome.feedback = await feedback.totals(run.conn, run.customer_uuid, batch.doc, batch.day, run.limits, row)


BEFORE_TRANSACTION: tuple[tuple[str, Callable[[Run], None]], ...] = (
    ("decode", decode_step),
    ("validate", validate_step),
    ("order", order_step),
    ("locate", locate_step),
)
BEFORE_QUOTA: tuple[tuple[str, Step], ...] = (
    ("resume", resume_step),
    ("filter", filter_step),
)
# From the quota's phase 1 to its phase 2 and the counting: run after a savepoint, and once more
# with the quota lock held from the start when phase 2 finds the allowance gone (QuotaRace).
QUOTA_PHASES: tuple[tuple[str, Step], ...] = (
    ("quota", quota_step),
    ("geofence", geofence_step),
    ("store", store_step),
    ("latest", latest_step),
    ("confirm", confirm_quota_step),
    ("events", events_step),
    ("usage", usage_step),
)
IN_TRANSACTION = BEFORE_QUOTA + QUOTA_PHASES


class Pipeline:
    """Runs batches through the steps; caches what every batch of a customer needs (plan limits,
    geofences, which day partitions exist)."""

    def __init__(
        self,
        registry: DatabaseRegistry,
        rules: filters.Rules | None = None,
        bulk_concurrency: int = 2,
        plan_limits: plans.PlanLimits | None = None,
    ) -> None:
        self.registry = registry
        self.plan_limits = plan_limits or plans.PlanLimits(registry)  # the node's (Runtime.plan_limits)
        self.rules = rules or filters.Rules()
        # Large batches (a day's upload) in the database at once, per node: beyond about one per core
        # PostgreSQL spends its time contending (4 concurrent merges cost ~35% more CPU a row than
        # one, measured) and the rows do not arrive any sooner. Live batches never wait for this.
        self._bulk = asyncio.Semaphore(bulk_concurrency)
        self._fences: dict[str, GeofenceSet] = {}
        self._zones: dict[str, tuple[Any, fleet_events.Zones | None]] = {}  # customer -> (fingerprint, zones)
        self._partitions: dict[str, set[int]] = {}  # database name -> day numbers known to exist
        self._latest_listeners: list[Callable[[str, uuid.UUID, Point], Awaitable[None]]] = []
        self._committed_listeners: list[Callable[[Batch, Outcome], None]] = []
        self._event_listeners: list[Callable[[str, uuid.UUID, list[Event]], Awaitable[None]]] = []
        self._fleet_listeners: list[Callable[[str, fleet_events.Changes], Awaitable[Any]]] = []
        # The steps before the transaction run here, off the event loop: a 50,000-point batch is
        # ~100 ms of CPU, and on the loop every round trip of the transactions in flight (and every
        # websocket frame) would wait behind it; in a thread the loop gets the GIL back every few ms.
        self._cpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracking-prepare")

    def on_latest(self, listener: Callable[[str, uuid.UUID, Point], Awaitable[None]]) -> None:
        """Called (customer_id, vehicle_id, fix) after a batch moved a vehicle's latest position."""
        self._latest_listeners.append(listener)

    def on_committed(self, listener: Callable[[Batch, Outcome], None]) -> None:
        """Called (batch, outcome) once a batch's transaction committed (metrics); must be quick."""
        self._committed_listeners.append(listener)

    def on_events(self, listener: Callable[[str, uuid.UUID, list[Event]], Awaitable[None]]) -> None:
        """Called (customer_id, vehicle_id, events) after a batch committed new geofence events
        (e.g. tracking.event_feed.EventFeed.geofence_events: the dispatchers' live feed)."""
        self._event_listeners.append(listener)

    def on_fleet_events(self, listener: Callable[[str, fleet_events.Changes], Awaitable[Any]]) -> None:
        """Called (customer_id, changes) after a batch committed fleet events or retracted some
        (e.g. the fleet document's feed: Changes.feed_entries)."""
        self._fleet_listeners.append(listener)

    async def limits(self, customer_id: str) -> plans.Limits:
        """The customer's plan limits (the plan-limit service's cache)."""
        return await self.plan_limits.limits(customer_id)

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

    async def _speed_zones(self, conn: asyncpg.Connection, customer_id: uuid.UUID, fingerprint: Any):
        key = str(customer_id)
        cached = self._zones.get(key)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        zones = fleet_events.zones_from(await fleet_event_store.speed_zones(conn, customer_id), fingerprint)
        self._zones[key] = (fingerprint, zones)
        return zones

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
        """The steps before the transaction (CPU only, in the pipeline's thread; plus cached plan limits)."""
        now_ms = ms_from_datetime(now) if now else int(time.time() * 1000)
        run = Run(batch, await self.limits(batch.customer_id), self.rules, now_ms)
        run.cached_fences = self._fences.get(str(batch.customer_id))
        await asyncio.get_running_loop().run_in_executor(self._cpu, _before_transaction, run)
        return run

    @staticmethod
    async def _steps(run: Run, steps: Sequence[tuple[str, Step]], timings: dict[str, float]) -> None:
        for name, step in steps:
            step_started = time.perf_counter()
            await step(run)
            timings[name] = timings.get(name, 0.0) + _ms(step_started)

    @staticmethod
    async def _quota_phases(run: Run, timings: dict[str, float]) -> None:
        """QUOTA_PHASES after a savepoint; on QuotaRace back to it and once more, the lock held."""
        conn = run.conn
        if conn is None:
            raise RuntimeError("the quota phases run inside the batch's transaction")
        await conn.execute("SAVEPOINT before_quota")
        kept, rejected = (run.fixes, run.index, run.inside), dict(run.rejected)
        try:
            await Pipeline._steps(run, QUOTA_PHASES, timings)
        except QuotaRace:  # once, at most: the rerun holds the quota lock from its start
            await conn.execute("ROLLBACK TO SAVEPOINT before_quota")
            log.info("tracking_quota_race", customer_id=str(run.batch.customer_id), points=len(kept[1]))
            (run.fixes, run.index, run.inside), run.rejected = kept, rejected
            run.outcome.events, run.outcome.latest = [], None
            run.outcome.fleet = fleet_events.Changes()
            await _lock_quota(run)
            await Pipeline._steps(run, QUOTA_PHASES, timings)

    async def commit(self, run: Run) -> Outcome:
        """The steps in the transaction; returns when the batch is committed."""
        started = time.perf_counter()
        timings: dict[str, float] = {}  # where the time goes, in the batch's log line
        batch, now_ms = run.batch, run.now_ms
        db = await self.registry.for_customer(batch.customer_id)
        days = set(quota.per_day(run.fixes.ms))
        for _, early_days, _ in run.early:
            days.update(early_days.tolist())
        await self._ensure_partitions(db, days or {now_ms // DAY_MS})
        async with (
            self._bulk if batch.size >= BULK_POINTS else contextlib.nullcontext(),
            db.tenant(run.customer_uuid) as conn,
        ):
            run.conn = conn
            await position_store.lock_track(conn, run.customer_uuid, batch.vehicle_id)
            if batch.doc is not None:  # replayable from the document; tracker posts wait for the disk
                await position_store.commit_without_waiting_for_flush(conn)
            run.fences = await self._geofences(conn, run.customer_uuid)
            run.zones = await self._speed_zones(conn, run.customer_uuid, run.fences.fingerprint)
            timings["lock"] = _ms(started)
            await self._steps(run, BEFORE_QUOTA, timings)
            await self._quota_phases(run, timings)
            commit_started = time.perf_counter()
        timings["commit"] = _ms(commit_started)
        run.conn = None
        outcome = run.outcome
        for committed in self._committed_listeners:
            try:
                committed(batch, outcome)
            except Exception:
                log.exception("committed_listener_failed")
        customer = str(batch.customer_id)
        if outcome.latest is not None:
            await _notify(self._latest_listeners, "latest", customer, batch.vehicle_id, outcome.latest)
        if outcome.events:
            await _notify(self._event_listeners, "events", customer, batch.vehicle_id, list(outcome.events))
        if outcome.fleet.added or outcome.fleet.retracted:
            await _notify(self._fleet_listeners, "fleet", customer, outcome.fleet)
        log.info(
            "tracking_batch",
            customer_id=str(batch.customer_id),
            vehicle_id=str(batch.vehicle_id),
            source=batch.source,
            doc=batch.doc,
            points=batch.size,
            stored=outcome.stored,
            skipped=outcome.skipped,
            rejected=outcome.rejected,
            events=len(outcome.events),
            fleet_events=len(outcome.fleet.added),
            retracted=len(outcome.fleet.retracted),
            ms=_ms(started),
            step_ms=timings,
        )
        return outcome


async def _notify(listeners: Sequence[Callable[..., Awaitable[Any]]], kind: str, customer: str, *args: Any) -> None:
    """Call each after-commit listener of one kind; a failing one is logged and the others still run
    (the batch is committed whatever they do)."""
    for listener in listeners:
        try:
            await listener(customer, *args)
        except Exception:
            log.exception(f"{kind}_listener_failed", customer_id=customer)
