"""Fleet events, trips and stops of a vehicle, kept equal to one run over its fixes in time order
whatever order and batches they arrive in (the pipeline's `events` step; the offline task).

A batch's stored fixes span [first, last]. The analysis (analysis.analyze with RULES) restarts from
  * the vehicle's state after its last stored fix (motion_state) when the batch is all after it:
    a live batch analyses only its own fixes;
  * else the state of the last stop confirmed before `first` (stops.state), over the stored fixes
    after that confirmation (a backfill: its window, read from gps_positions);
  * else the beginning of the vehicle's fixes.
A backfill runs forward until it confirms a stop after `last` whose stored checkpoint state is
identical: from there on everything stored is already what an ordered run gives, so the window ends
there; else it runs to the vehicle's last fix and the state is saved. In the window, events are
matched with the stored ones decided by the same fixes (analysis.Event.key): matches stay, new ones
are recorded and published, stored ones no longer produced are deleted and published as
"<type>.retracted". Trips and stops starting in the window are replaced by those of the run.
Everything happens under the vehicle's track lock in the pipeline's transaction."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np
import structlog

from storage import fleet_events as store
from storage import positions as position_store
from storage.registry import DatabaseRegistry
from sync_server.domain.tracking import analysis, connectivity, motion, overspeed
from sync_server.domain.tracking.analysis import Event
from sync_server.domain.tracking.event_feed import Entry
from sync_server.domain.tracking.geofences import GeofenceSet, shape_from_row
from sync_server.domain.tracking.points import ms_from_datetime, time_of
from sync_server.domain.tracking.thresholds import Thresholds, speed_limit

log = structlog.get_logger("sync_server.domain.tracking.fleet_events")

RULES: tuple[analysis.Rule, ...] = (connectivity.step, overspeed.step, motion.step)
EVENT_TYPES = (
    connectivity.OFFLINE,
    connectivity.ONLINE,
    overspeed.OVERSPEED,
    motion.TRIP_STARTED,
    motion.TRIP_ENDED,
    motion.STOP_STARTED,
    motion.STOP_ENDED,
    "quota.reached",
)
OFFLINE_CHECK_SECONDS = 30.0  # how often the runtime task looks for silent vehicles
PAGE_FIXES = 20_000  # stored fixes read per round trip while a backfill recomputes


@dataclass
class Zones:
    """Speed-limited geofences of a customer (limits in m/s)."""

    fences: GeofenceSet
    limits: dict[Any, float]


@dataclass
class Context:
    thresholds: Thresholds
    limit: float | None  # m/s: the vehicle's, else the customer's default
    zones: Zones | None = None
    vehicle_exists: bool = True  # a vehicle deleted meanwhile gets no events (its rows are gone)

    def limits(self, lat: np.ndarray, lng: np.ndarray) -> list[float | None]:
        if self.zones is None or not len(lat):
            return [self.limit] * len(lat)
        out: list[float | None] = []
        for ids in self.zones.fences.inside_all(np.asarray(lat, dtype=np.float64), np.asarray(lng, dtype=np.float64)):
            found = [self.zones.limits[i] for i in ids if i in self.zones.limits]
            if self.limit is not None:
                found.append(self.limit)
            out.append(min(found) if found else None)
        return out


@dataclass
class Recorded:
    """One event as recorded (or retracted): what is published and what the fleet feed shows."""

    id: int
    vehicle_id: uuid.UUID | None
    type: str
    ms: int
    lat: float | None
    lng: float | None
    data: dict

    @property
    def occurred_at(self) -> dt.datetime:
        return time_of(self.ms)

    @property
    def ordering_key(self) -> str | None:
        return str(self.vehicle_id) if self.vehicle_id else None

    def payload(self) -> dict:
        """The webhook `data` of the event (and of its retraction)."""
        return {
            "event_id": self.id,
            "vehicle_id": str(self.vehicle_id) if self.vehicle_id else None,
            "time": analysis.iso(self.ms),
            "lat": self.lat,
            "lng": self.lng,
            **self.data,
        }

    def feed_entry(self, retracted: bool = False) -> Entry:
        """The fleet document's feed entry (tracking.event_feed); a retraction names what it retracts."""
        fields: dict[str, Any] = {"lat": self.lat, "lng": self.lng}
        fields.update({k: v for k, v in self.data.items() if v is None or isinstance(v, str | int | float)})
        if retracted:
            fields["retracts"] = f"fleet:{self.id}"
        return Entry(
            id=f"fleet:{self.id}" + (":retracted" if retracted else ""),
            type=self.type + (".retracted" if retracted else ""),
            t=self.ms,
            vehicle_id=str(self.vehicle_id) if self.vehicle_id else None,
            data=dict(list(fields.items())[:16]),
        )


@dataclass
class Changes:
    added: list[Recorded] = field(default_factory=list)
    retracted: list[Recorded] = field(default_factory=list)

    def feed_entries(self) -> list[Entry]:
        return [e.feed_entry(retracted=True) for e in self.retracted] + [e.feed_entry() for e in self.added]


async def context(conn: asyncpg.Connection, customer_id, vehicle_id, zones: Zones | None) -> Context:
    settings, vehicle_limit, found = await store.settings_of(conn, customer_id, vehicle_id)
    th = Thresholds.of(settings)
    limit_kmh = speed_limit(vehicle_limit)
    if limit_kmh is None:
        limit_kmh = speed_limit(th.speed_limit_kmh)
    return Context(th, limit_kmh / 3.6 if limit_kmh else None, zones, found)


def zones_from(rows: Sequence[Any], fingerprint: Any) -> Zones | None:
    shapes, limits = [], {}
    for row in rows:
        limit = speed_limit(row["limit"])
        if limit is None:
            continue
        try:
            shapes.append(shape_from_row(row))
        except (ValueError, TypeError, KeyError, IndexError):
            continue
        limits[row["id"]] = limit / 3.6
    return Zones(GeofenceSet(shapes, fingerprint), limits) if shapes else None


def _open_start(state: dict, last_ms: int) -> int:
    """The earliest start a segment written by a run continuing from `state` can have: the open
    stop's or trip's, the stop candidate's, or the last fix (where a trip would start)."""
    if state["mode"] == "stopped":
        return state["stop"]["ms"]
    starts = [last_ms]
    if state["trip"] is not None:
        starts.append(state["trip"]["ms"])
    if state["cand"] is not None:
        starts.append(state["cand"]["ms"])
    return min(starts)


async def recompute(
    conn: asyncpg.Connection,
    customer_id: uuid.UUID,
    vehicle_id: uuid.UUID,
    first_ms: int,
    last_ms: int,
    now_ms: int,
    ctx: Context,
    batch: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Changes:
    """Bring the vehicle's events, trips and stops up to date after fixes in [first_ms, last_ms]
    were stored (`batch`: exactly those fixes as columns ms, lat, lng, speed, when known)."""
    th = ctx.thresholds
    saved = await store.motion_state(conn, customer_id, vehicle_id)
    meets = None
    stored_checkpoints: dict[int, tuple[int, str]] = {}
    if saved is not None and first_ms > saved["last_ms"]:
        state = analysis.loads(saved["state"])
        after_ms: int | None = saved["last_ms"]
        seg_from = _open_start(state, saved["last_ms"])
    else:
        checkpoint = await store.checkpoint_before(conn, customer_id, vehicle_id, first_ms)
        if checkpoint is not None:
            state = analysis.loads(checkpoint["state"])
            after_ms = checkpoint["confirmed_ms"]
            seg_from = ms_from_datetime(checkpoint["start_time"])
        else:
            state, after_ms, seg_from = analysis.initial(), None, None
        batch = None  # the window holds stored fixes besides the batch's: read them

        def meets(start: int, confirmed: int, text: str) -> bool:
            return confirmed > last_ms and stored_checkpoints.get(start) == (confirmed, text)

    out = analysis.Output()
    result: analysis.Result | None = None
    if batch is not None:
        ms, lat, lng, speed = batch
        result = analysis.analyze(state, ms, lat, lng, speed, ctx.limits(lat, lng), th, RULES, out=out)
    else:
        cursor = time_of(after_ms) if after_ms is not None else None
        while True:
            rows = await position_store.page(
                conn,
                customer_id,
                vehicle_id,
                cursor or dt.datetime.min.replace(tzinfo=dt.UTC),
                dt.datetime.max.replace(tzinfo=dt.UTC),
                cursor,
                PAGE_FIXES,
            )
            if not rows:
                if result is None:
                    result = analysis.analyze(state, [], [], [], [], None, th, RULES, out=out)
                break
            ms = np.array([ms_from_datetime(r["time"]) for r in rows], dtype=np.int64)
            lat = np.array([r["lat"] for r in rows], dtype=np.float64)
            lng = np.array([r["lng"] for r in rows], dtype=np.float64)
            speed = np.array([np.nan if r["speed"] is None else r["speed"] for r in rows], dtype=np.float64)
            if int(ms[-1]) > last_ms:
                for c in await store.checkpoints_between(
                    conn, customer_id, vehicle_id, max(last_ms, int(ms[0]) - 1), int(ms[-1])
                ):
                    stored_checkpoints[ms_from_datetime(c["start_time"])] = (c["confirmed_ms"], c["state"])
            full = len(rows) == PAGE_FIXES
            result = analysis.analyze(state, ms, lat, lng, speed, ctx.limits(lat, lng), th, RULES, meets=meets, out=out)
            if result.converged is not None or not full:
                break
            cursor = rows[-1]["time"]
    if result.converged is None:
        motion.open_rows(state, out)
    return await _write(conn, customer_id, vehicle_id, result, after_ms, seg_from, now_ms, th, saved)


async def _write(
    conn: asyncpg.Connection,
    customer_id: uuid.UUID,
    vehicle_id: uuid.UUID,
    result: analysis.Result,
    after_ms: int | None,
    seg_from: int | None,
    now_ms: int,
    th: Thresholds,
    saved: Any,
) -> Changes:
    out, converged = result.output, result.converged
    until_ms = converged[1] if converged else None
    wanted = list(out.events)
    tail = None
    if converged is None:
        tail = connectivity.tail(analysis.last_fix(result.state), now_ms, th)
        if tail is not None:
            wanted.append(Event(connectivity.OFFLINE, tail[0], tail[1], tail[2], tail[3], None))
    existing = await store.decided_between(conn, customer_id, vehicle_id, after_ms, until_ms, converged is None)
    pool: dict[tuple, list[Any]] = {}
    for row in existing:
        key = (row["type"], ms_from_datetime(row["time"]), row["lat"], row["lng"], analysis.canonical(row["data"]))
        pool.setdefault(key, []).append(row)
    new: list[Event] = []
    moved_ids, moved_to = [], []
    for event in wanted:
        matches = pool.get(event.key)
        if matches:
            row = matches.pop()
            if row["decided_ms"] != event.decided_ms:
                moved_ids.append(row["id"])
                moved_to.append(event.decided_ms)
        else:
            new.append(event)
    gone = [row for rows in pool.values() for row in rows]
    changes = Changes()
    await store.delete_events(conn, customer_id, [r["id"] for r in gone])
    await store.redecide(conn, customer_id, moved_ids, moved_to)
    ids = await store.insert_events(
        conn, customer_id, vehicle_id, [(e.type, time_of(e.ms), e.lat, e.lng, e.data, e.decided_ms) for e in new]
    )
    changes.added = [Recorded(i, vehicle_id, e.type, e.ms, e.lat, e.lng, e.data) for i, e in zip(ids, new)]
    changes.retracted = [
        Recorded(r["id"], vehicle_id, r["type"], ms_from_datetime(r["time"]), r["lat"], r["lng"], r["data"])
        for r in gone
    ]
    since = time_of(seg_from) if seg_from is not None else None
    until = time_of(converged[0]) if converged else None
    in_window = [start for start in (*out.trips, *out.stops) if (seg_from is None or start >= seg_from)]
    in_window = [start for start in in_window if converged is None or start < converged[0]]
    trips = _rows(out.trips, TRIP_FIELDS, in_window)
    stops = _rows(out.stops, STOP_FIELDS, in_window)
    await store.replace_segments(conn, customer_id, vehicle_id, "trips", since, until, trips)
    await store.replace_segments(conn, customer_id, vehicle_id, "stops", since, until, stops)
    if converged is None and result.last_ms is not None:
        await store.save_state(
            conn, customer_id, vehicle_id, result.last_ms, analysis.dumps(result.state), tail[0] if tail else None
        )
    return changes


TRIP_FIELDS = (
    "start_ms end_ms start_lat start_lng end_lat end_lng distance_m duration_s max_speed avg_speed path"
).split()
STOP_FIELDS = "start_ms end_ms lat lng duration_s confirmed_ms state".split()


def _rows(segments: dict[int, dict], names: Sequence[str], starts: Sequence[int]) -> list[tuple]:
    """Rows in the column order of storage.fleet_events (times as datetimes), by start."""
    chosen = sorted(set(starts) & set(segments))

    def value(row: dict, name: str) -> Any:
        if name in ("start_ms", "end_ms"):
            return time_of(row[name]) if row[name] is not None else None
        return row[name]

    return [tuple(value(segments[start], n) for n in names) for start in chosen]


async def offline_once(
    registry: DatabaseRegistry, now_ms: int | None = None, limit: int = 1000, feed: Any = None
) -> int:
    """Record device.offline for every vehicle silent for its customer's offline_after_s (server
    time), each in its own transaction under the vehicle's track lock, announced to webhooks in it
    and to the fleet document's feed (`feed`: tracking.event_feed.EventFeed) after it. Returns how many."""
    from sync_server.domain.tracking import announce
    from sync_server.domain.webhooks import outbox

    now_ms = now_ms if now_ms is not None else int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    shortest = 60_000  # offline_after_s is at least 60 s (api validation)
    recorded = 0
    for db in [registry.shared, *await registry.dedicated()]:
        async with db.operator("tracking_offline") as conn:
            rows = await store.silent_since(conn, now_ms - shortest, limit)
        for row in rows:
            th = Thresholds.of(row["settings"])
            if now_ms - row["last_ms"] <= th.offline_after_s * 1000:
                continue
            cid, vid = row["customer_id"], row["vehicle_id"]
            async with db.tenant(cid) as conn:
                await position_store.lock_track(conn, cid, vid)
                saved = await store.motion_state(conn, cid, vid)
                if saved is None or saved["offline_ms"] is not None:
                    continue
                tail = connectivity.tail(analysis.last_fix(analysis.loads(saved["state"])), now_ms, th)
                if tail is None:
                    continue
                ids = await store.insert_events(
                    conn, cid, vid, [(connectivity.OFFLINE, time_of(tail[0]), tail[1], tail[2], tail[3], None)]
                )
                await store.mark_offline(conn, cid, vid, tail[0])
                changes = Changes(added=[Recorded(ids[0], vid, connectivity.OFFLINE, *tail)])
                await outbox.publish(conn, cid, announce.fleet_messages(changes))
            recorded += 1
            if feed is not None:
                try:
                    await feed.publish(str(cid), changes.feed_entries())
                except Exception:
                    log.exception("fleet_feed_failed", customer_id=str(cid))
            log.info("device_offline", customer_id=str(cid), vehicle_id=str(vid), since=analysis.iso(tail[0]))
    return recorded


async def offline_loop(registry: DatabaseRegistry, interval: float, stopping: asyncio.Event, feed: Any = None) -> None:
    while not stopping.is_set():
        try:
            await offline_once(registry, feed=feed)
        except Exception:
            log.exception("tracking_offline_failed")
        try:
            await asyncio.wait_for(stopping.wait(), interval)
        except TimeoutError:
            pass
