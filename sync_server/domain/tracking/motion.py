"""Trips and stops with hysteresis: trip.started / trip.ended, stop.started / stop.ended, and the
rows of `trips` and `stops`.

The rule, fix by fix in time order:
  * a stop candidate is a fix no faster than `stop_speed_kmh`; it becomes a stop (stop.started at
    the candidate's time and place) once the following fixes stayed within `stop_radius_m` of it, none
    faster, for `min_stop_s` (a gap in the data within the radius counts as stopped time). The trip
    before it ends there (trip.ended), with its totals as they were at the candidate;
  * a fix faster, or outside the radius, drops the candidate (the fix itself is the next one when slow);
  * a stopped vehicle starts a trip when a fix lies outside the stop's radius: the stop ends, and
    the trip starts, at the last fix inside it (stop.ended, trip.started);
  * before the first stop or trip the state is `unknown`: the first movement starts a trip.
A trip's distance is the sum of the hops between its fixes (WGS-84, analysis.distance), its
duration end - start, its average speed distance / duration, its max speed the fastest fix; its path
keeps the fixes at least PATH_MIN_M from the last kept one (at most MAX_PATH points, halved
deterministically when full)."""

from __future__ import annotations

from sync_server.domain.tracking.analysis import Fix, Output, distance, iso, kmh
from sync_server.domain.tracking.thresholds import Thresholds

TRIP_STARTED = "trip.started"
TRIP_ENDED = "trip.ended"
STOP_STARTED = "stop.started"
STOP_ENDED = "stop.ended"
PATH_MIN_M = 25.0
MAX_PATH = 2000


def step(state: dict, fix: Fix, prev: Fix | None, th: Thresholds, out: Output) -> None:
    mode = state["mode"]
    slow = fix.speed * 3.6 <= th.stop_speed_kmh
    if mode == "stopped":
        stop = state["stop"]
        if prev is not None and distance(stop["lat"], stop["lng"], fix.lat, fix.lng) > th.stop_radius_m:
            _end_stop(stop, prev, out)
            _start_trip(state, prev, fix, slow, out)
        return
    trip = state["trip"]
    if trip is not None:
        _add(trip, fix)
    cand = state["cand"]
    if cand is not None and slow and distance(cand["lat"], cand["lng"], fix.lat, fix.lng) <= th.stop_radius_m:
        if fix.ms - cand["ms"] >= th.min_stop_s * 1000:
            _confirm(state, cand, fix, out)
        return
    if mode == "unknown" and prev is not None:
        _start_trip(state, prev, fix, slow, out)
        return
    state["cand"] = _candidate(fix, trip) if slow else None


def _candidate(fix: Fix, trip: dict | None) -> dict:
    c = {"ms": fix.ms, "lat": fix.lat, "lng": fix.lng}
    if trip is not None:
        c.update(dist=trip["dist"], max=trip["max"], plen=len(trip["path"]))
    return c


def _add(trip: dict, fix: Fix) -> None:
    trip["dist"] += fix.gap_m
    trip["max"] = max(trip["max"], fix.speed)
    path = trip["path"]
    kept = path[-1]
    if distance(kept[1], kept[0], fix.lat, fix.lng) >= PATH_MIN_M:
        path.append([fix.lng, fix.lat])
        if len(path) >= MAX_PATH:
            trip["path"] = path[::2]


def _start_trip(state: dict, at: Fix, fix: Fix, slow: bool, out: Output) -> None:
    trip = {"ms": at.ms, "lat": at.lat, "lng": at.lng, "dist": 0.0, "max": at.speed, "path": [[at.lng, at.lat]]}
    _add(trip, fix)
    state.update(mode="moving", trip=trip, stop=None, cand=_candidate(fix, trip) if slow else None)
    out.event(TRIP_STARTED, at.ms, at.lat, at.lng, {})
    out.trips[at.ms] = _trip_row(trip, fix.ms, fix.lat, fix.lng, None)


def _trip_row(trip: dict, end_ms: int, end_lat: float, end_lng: float, ended: bool | None) -> dict:
    duration = (end_ms - trip["ms"]) / 1000
    return {
        "start_ms": trip["ms"],
        "end_ms": end_ms if ended else None,
        "start_lat": trip["lat"],
        "start_lng": trip["lng"],
        "end_lat": end_lat,
        "end_lng": end_lng,
        "distance_m": trip["dist"],
        "duration_s": duration,
        "max_speed": trip["max"],
        "avg_speed": trip["dist"] / duration if duration > 0 else 0.0,
        "path": trip["path"],
    }


def _confirm(state: dict, cand: dict, fix: Fix, out: Output) -> None:
    trip = state["trip"]
    if trip is not None:
        trip.update(dist=cand["dist"], max=cand["max"], path=trip["path"][: cand["plen"]])
        if trip["path"][-1] != [cand["lng"], cand["lat"]]:
            trip["path"].append([cand["lng"], cand["lat"]])
        row = _trip_row(trip, cand["ms"], cand["lat"], cand["lng"], True)
        out.trips[trip["ms"]] = row
        out.event(
            TRIP_ENDED,
            cand["ms"],
            cand["lat"],
            cand["lng"],
            {
                "started_at": iso(trip["ms"]),
                "distance_m": round(row["distance_m"], 1),
                "duration_s": row["duration_s"],
                "max_speed_kmh": kmh(row["max_speed"]),
                "avg_speed_kmh": kmh(row["avg_speed"]),
            },
        )
    stop = {"ms": cand["ms"], "lat": cand["lat"], "lng": cand["lng"], "confirmed": fix.ms}
    state.update(mode="stopped", trip=None, cand=None, stop=stop)
    out.event(STOP_STARTED, cand["ms"], cand["lat"], cand["lng"], {})
    out.stops[cand["ms"]] = _stop_row(stop, None)
    out.confirmed = cand["ms"]


def _stop_row(stop: dict, end_ms: int | None, last_ms: int | None = None) -> dict:
    until = end_ms if end_ms is not None else (last_ms if last_ms is not None else stop["confirmed"])
    return {
        "start_ms": stop["ms"],
        "end_ms": end_ms,
        "lat": stop["lat"],
        "lng": stop["lng"],
        "duration_s": (until - stop["ms"]) / 1000,
        "confirmed_ms": stop["confirmed"],
        "state": None,  # the checkpoint: set by the run that confirmed it, kept otherwise
    }


def _put_stop(out: Output, row: dict) -> None:
    """A stop's row; its checkpoint state, when this run confirmed it, stays."""
    known = out.stops.get(row["start_ms"])
    if known is not None and known.get("state"):
        row["state"] = known["state"]
    out.stops[row["start_ms"]] = row


def _end_stop(stop: dict, last: Fix, out: Output) -> None:
    _put_stop(out, _stop_row(stop, last.ms))
    out.event(
        STOP_ENDED,
        last.ms,
        last.lat,
        last.lng,
        {"started_at": iso(stop["ms"]), "duration_s": (last.ms - stop["ms"]) / 1000},
    )


def open_rows(state: dict, out: Output) -> None:
    """The open trip or stop after the last fix, with what it has so far."""
    last = state["last"]
    if last is None:
        return
    if state["mode"] == "stopped":
        _put_stop(out, _stop_row(state["stop"], None, last[0]))
    elif state["trip"] is not None:
        trip = state["trip"]
        out.trips[trip["ms"]] = _trip_row(trip, last[0], last[1], last[2], None)
