"""The fleet-event analysis of one vehicle's fixes: a state machine run over fixes in time order,
its rules one module each (connectivity, overspeed, motion), its state one JSON object.

Exactness under late data rests on two things. (1) Every number is computed fix by fix with
Python's scalar math (numpy's vector kernels may round differently by position in an array, so a
batch split could change a sum), speeds as float32 as PostgreSQL stores them, and the state goes
through JSON, which round-trips floats exactly. (2) The state after a stop is confirmed is a
checkpoint (kept on the stop row): a run restarted from it over the same later fixes yields the
same events, trips and stops as the run that wrote it. `analyze` reports every confirmation, so a
backfill can stop once it confirms a stored stop with an identical state (fleet_events.recompute).

Every event records `decided_ms`: the fix whose processing produced it."""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sync_server.domain.tracking.distance import geodesic
from sync_server.domain.tracking.thresholds import Thresholds

_A = 6_378_137.0  # WGS-84
_E2 = 0.00669437999014
LOCAL_M = 10_000.0  # below this the local ellipsoidal distance is used (error < 1e-4 of the distance)


def distance(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Metres on the WGS-84 ellipsoid: the local ellipsoidal approximation at the mid latitude
    (meridional and prime-vertical radii) for short hops, Karney's geodesic beyond LOCAL_M."""
    if lat1 == lat2 and lng1 == lng2:
        return 0.0
    mid = math.radians((lat1 + lat2) * 0.5)
    s = math.sin(mid)
    w = math.sqrt(1 - _E2 * s * s)
    dlng = lng2 - lng1
    if dlng > 180:
        dlng -= 360
    elif dlng < -180:
        dlng += 360
    dy = math.radians(lat2 - lat1) * _A * (1 - _E2) / (w * w * w)
    dx = math.radians(dlng) * _A / w * math.cos(mid)
    d = math.sqrt(dx * dx + dy * dy)
    return d if d < LOCAL_M else geodesic(lat1, lng1, lat2, lng2)


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def kmh(mps: float) -> float:
    return round(mps * 3.6, 2)


_F32 = struct.Struct("<f")


def f32(value: float) -> float:
    """A speed as PostgreSQL's `real` holds it (NaN stays NaN)."""
    return float(_F32.unpack(_F32.pack(value))[0])


@dataclass(frozen=True, slots=True)
class Fix:
    ms: int
    lat: float
    lng: float
    speed: float  # m/s: reported, else implied by the hop from the previous fix
    gap_m: float  # metres from the previous fix
    limit: float | None  # m/s, the speed limit at this fix


@dataclass
class Event:
    type: str
    ms: int
    lat: float | None
    lng: float | None
    data: dict[str, Any]
    decided_ms: int | None

    @property
    def key(self) -> tuple:
        """What makes two events the same event (the decision time is not part of it)."""
        return (self.type, self.ms, self.lat, self.lng, canonical(self.data))


def canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass
class Output:
    events: list[Event] = field(default_factory=list)
    trips: dict[int, dict] = field(default_factory=dict)  # start ms -> row
    stops: dict[int, dict] = field(default_factory=dict)  # start ms -> row
    confirmed: int | None = None  # start ms of a stop confirmed by the current fix
    decided: int = 0  # the current fix's time

    def event(self, type: str, ms: int, lat: float | None, lng: float | None, data: dict) -> None:
        self.events.append(Event(type, ms, lat, lng, data, self.decided))


@dataclass
class Result:
    output: Output
    state: dict
    last_ms: int | None  # the last fix analysed
    converged: tuple[int, int] | None = None  # (stop start, confirmed) where the run met a stored checkpoint


Rule = Callable[[dict, Fix, "Fix | None", Thresholds, Output], None]


def initial() -> dict:
    return {"last": None, "mode": "unknown", "trip": None, "cand": None, "stop": None, "over": None}


def dumps(state: dict) -> str:
    return json.dumps(state, sort_keys=True, separators=(",", ":"), allow_nan=False)


def loads(text: str | None) -> dict:
    return json.loads(text) if text else initial()


def last_fix(state: dict) -> Fix | None:
    last = state.get("last")
    if not last:
        return None
    return Fix(last[0], last[1], last[2], last[3], 0.0, None)


Column = Any  # a sequence or numpy column of numbers (read through tolist: exact Python numbers)


def _values(column: Any) -> list:
    return column.tolist() if hasattr(column, "tolist") else list(column)


def analyze(
    state: dict,
    ms: Column,
    lat: Column,
    lng: Column,
    speed: Column,
    limits: Sequence[float | None] | None,
    th: Thresholds,
    rules: Sequence[Rule],
    meets: Callable[[int, int, str], bool] | None = None,
    finish: Callable[[dict, Output], None] | None = None,
    out: Output | None = None,
) -> Result:
    """Run `rules` over the time-ordered fixes from `state` (changed in place). `meets(stop start,
    confirmed ms, state text)` says whether a confirmation equals a stored checkpoint: the run stops
    there. Otherwise `finish` reports what is still open after the last fix."""
    out = out if out is not None else Output()
    ms, lat, lng, speed = _values(ms), _values(lat), _values(lng), _values(speed)
    prev = last_fix(state)
    result = Result(out, state, prev.ms if prev else None)
    for i in range(len(ms)):
        t, a, b, s = int(ms[i]), float(lat[i]), float(lng[i]), f32(float(speed[i]))
        gap = distance(prev.lat, prev.lng, a, b) if prev is not None else 0.0
        if s != s:  # NaN: no reported speed
            s = gap / ((t - prev.ms) / 1000) if prev is not None and t > prev.ms else 0.0
        limit = limits[i] if limits is not None else None
        fix = Fix(t, a, b, s, gap, limit)
        out.decided = t
        out.confirmed = None
        for rule in rules:
            rule(state, fix, prev, th, out)
        state["last"] = [t, a, b, s]
        prev = fix
        result.last_ms = t
        if out.confirmed is not None:
            text = dumps(state)
            out.stops[out.confirmed]["state"] = text
            if meets is not None and meets(out.confirmed, t, text):
                result.converged = (out.confirmed, t)
                return result
    if finish is not None:
        finish(state, out)
    return result
