"""GPS fixes: the decoding of the track-document point format into the columns the pipeline carries,
and a single fix (`Point`) where one is handled alone (stored neighbours, the latest position).

Track documents hold JSON objects `{"t", "lat", "lng", "speed", "heading", "accuracy", "alt"}`:
`t` is ISO-8601 (no offset = UTC) or epoch milliseconds (Yjs numbers arrive as floats), speed is
m/s, heading degrees, accuracy and altitude metres; only t, lat and lng are required. Decoding only
checks types; ranges and plausibility are the filters' business.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from storage.positions import Fixes

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
DAY_MS = 86_400_000
_timedelta = dt.timedelta

MALFORMED = "malformed"


class Point:
    """One fix. `ms` (epoch milliseconds) orders and compares; `time` is what PostgreSQL stores."""

    __slots__ = ("ms", "lat", "lng", "speed", "heading", "accuracy", "alt", "_time")

    def __init__(
        self,
        ms: int,
        lat: float,
        lng: float,
        speed: float | None = None,
        heading: float | None = None,
        accuracy: float | None = None,
        alt: float | None = None,
    ) -> None:
        self.ms = ms
        self.lat = lat
        self.lng = lng
        self.speed = speed
        self.heading = heading
        self.accuracy = accuracy
        self.alt = alt
        self._time: dt.datetime | None = None

    @property
    def time(self) -> dt.datetime:
        if self._time is None:
            self._time = time_of(self.ms)
        return self._time

    @property
    def day(self) -> int:
        """Days since the epoch (UTC) of the fix."""
        return self.ms // DAY_MS

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": self.time.isoformat().replace("+00:00", "Z"), "lat": self.lat, "lng": self.lng}
        for name in ("speed", "heading", "accuracy", "alt"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def __repr__(self) -> str:
        return f"Point({self.time.isoformat()}, {self.lat}, {self.lng})"


def time_of(ms: int) -> dt.datetime:
    """Epoch milliseconds -> the UTC datetime PostgreSQL stores."""
    return EPOCH + _timedelta(milliseconds=ms)


def ms_from_datetime(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def day_of(ms: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=ms // DAY_MS)


def day_number(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days


def parse_time(value: Any) -> int | None:
    """Epoch milliseconds from ISO-8601 text or an epoch-milliseconds number; None if neither."""
    kind = type(value)
    if kind is float:
        if value != value or value in (math.inf, -math.inf):
            return None
        return int(value)
    if kind is int:
        return value
    if kind is str:
        text = value.strip()
        if text.endswith(("z", "Z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            return None
        return ms_from_datetime(parsed)
    return None


def _number(value: Any) -> float | None:
    kind = type(value)
    if kind is float:
        return value if value - value == 0 else None  # finite
    if kind is int:
        return float(value)
    return None


_BAD = object()


def _optional(value: Any) -> Any:
    """An optional numeric field: float, None when absent/null, _BAD when present but not a number."""
    if value is None:
        return None
    number = _number(value)
    return _BAD if number is None else number


def from_record(row: Any) -> Point:
    """A stored fix (time, lat, lng, speed, heading, accuracy, altitude) -> Point."""
    p = Point(
        ms_from_datetime(row["time"]),
        row["lat"],
        row["lng"],
        row["speed"],
        row["heading"],
        row["accuracy"],
        row["altitude"],
    )
    p._time = row["time"]
    return p


def decode(raw: Any) -> Point | str:
    """A track-document element -> Point, or the rejection reason `malformed`. (Hot: one call per
    point; the common all-floats shape takes the short path.)"""
    if type(raw) is not dict:
        return MALFORMED
    get = raw.get
    t, lat, lng = get("t"), get("lat"), get("lng")
    ms: int | None
    if (
        type(t) is float
        and type(lat) is float
        and type(lng) is float
        and t - t == 0
        and lat - lat == 0
        and lng - lng == 0
    ):
        ms = int(t)
    else:
        ms = parse_time(t)
        lat = _number(lat)
        lng = _number(lng)
        if ms is None or lat is None or lng is None:
            return MALFORMED
    speed, heading, accuracy, alt = get("speed"), get("heading"), get("accuracy"), get("alt")
    if not ((type(speed) is float and speed - speed == 0) or speed is None):
        speed = _optional(speed)
    if not ((type(heading) is float and heading - heading == 0) or heading is None):
        heading = _optional(heading)
    if not ((type(accuracy) is float and accuracy - accuracy == 0) or accuracy is None):
        accuracy = _optional(accuracy)
    if not ((type(alt) is float and alt - alt == 0) or alt is None):
        alt = _optional(alt)
    if speed is _BAD or heading is _BAD or accuracy is _BAD or alt is _BAD:
        return MALFORMED
    return Point(ms, lat, lng, speed, heading, accuracy, alt)


def columns(points: Sequence[Point]) -> Fixes:
    """The fixes as numpy columns (absent optional values as NaN), in the given order."""
    n = len(points)
    return Fixes(
        np.fromiter([p.ms for p in points], np.int64, n),
        np.fromiter([p.lat for p in points], np.float64, n),
        np.fromiter([p.lng for p in points], np.float64, n),
        np.array([p.speed for p in points], dtype=np.float64),
        np.array([p.heading for p in points], dtype=np.float64),
        np.array([p.accuracy for p in points], dtype=np.float64),
        np.array([p.alt for p in points], dtype=np.float64),
    )


def point_at(fixes: Fixes, k: int) -> Point:
    """Row k of the columns as a Point (NaN -> None)."""
    optional = [
        None if v != v else v
        for v in (float(fixes.speed[k]), float(fixes.heading[k]), float(fixes.accuracy[k]), float(fixes.altitude[k]))
    ]
    return Point(int(fixes.ms[k]), float(fixes.lat[k]), float(fixes.lng[k]), *optional)


FIELDS = ("t", "lat", "lng", "speed", "heading", "accuracy", "alt")
_NUMBERS = frozenset((float, int))
_OPTIONAL_NUMBERS = frozenset((float, int, type(None)))
_MS_BOUND = 8e15  # epoch ms beyond +-250,000 years: as far in the future (or past) as any filter cares


def decode_all(raw: Sequence[Any], first_index: int = 0) -> tuple[Fixes, np.ndarray, list[int]]:
    """Track-document elements -> (columns of the well-formed ones, their element indices, the
    element indices of malformed ones). The common shape (numbers, optional ones null or absent) is
    read a field at a time over the whole batch; anything else takes `decode` element by element,
    whose rules it shares."""
    n = len(raw)
    try:
        fields = [list(map(dict.get, raw, [key] * n)) for key in FIELDS]
    except TypeError:  # an element that is not a JSON object
        return _decode_each(raw, first_index)
    kinds = [set(map(type, column)) for column in fields]
    if not (all(k <= _NUMBERS for k in kinds[:3]) and all(k <= _OPTIONAL_NUMBERS for k in kinds[3:])):
        return _decode_each(raw, first_index)
    try:
        t, lat, lng, *optional = [np.array(column, dtype=np.float64) for column in fields]
    except OverflowError:  # an integer beyond float range
        return _decode_each(raw, first_index)
    for column, values in zip(optional, fields[3:]):
        if np.count_nonzero(np.isnan(column)) != values.count(None):  # a NaN that was sent, not an absent value
            return _decode_each(raw, first_index)
    return _checked(t, lat, lng, optional, first_index)


def _checked(
    t: np.ndarray, lat: np.ndarray, lng: np.ndarray, optional: list[np.ndarray], first_index: int
) -> tuple[Fixes, np.ndarray, list[int]]:
    """Float columns of numbers (NaN: an absent optional value) -> (columns of the well-formed fixes,
    their element indices, the malformed ones' indices): non-finite required or infinite optional."""
    n = len(t)
    bad = ~(np.isfinite(t) & np.isfinite(lat) & np.isfinite(lng))
    for column in optional:
        bad |= np.isinf(column)
    index = np.arange(first_index, first_index + n, dtype=np.int64)
    malformed: list[int] = []
    if bad.any():
        malformed = index[bad].tolist()
        good = ~bad
        t, lat, lng, index = t[good], lat[good], lng[good], index[good]
        optional = [column[good] for column in optional]
    ms = np.clip(t, -_MS_BOUND, _MS_BOUND).astype(np.int64)  # truncates toward zero, like int()
    return Fixes(ms, lat, lng, *optional), index, malformed


@dataclass(frozen=True, slots=True)
class Chunk:
    """Elements [first, first + count) of a track document's `points` array, decoded: the
    well-formed ones as columns with their element indices (ascending), the malformed ones' indices.
    (A dataclass, not a NamedTuple: the fields `count` and `index` would shadow tuple methods.)"""

    first: int
    count: int
    fixes: Fixes
    index: np.ndarray
    malformed: list[int]

    @property
    def end(self) -> int:
        return self.first + self.count

    def part(self, start: int, stop: int) -> Chunk:
        """Elements [start, stop) of this chunk (clipped to it)."""
        start, stop = max(start, self.first), min(stop, self.end)
        if start <= self.first and stop >= self.end:
            return self
        lo, hi = np.searchsorted(self.index, [start, stop])
        return Chunk(
            start,
            max(0, stop - start),
            self.fixes.take(slice(lo, hi)),
            self.index[lo:hi],
            [i for i in self.malformed if start <= i < stop],
        )

    @staticmethod
    def join(parts: Sequence[Chunk]) -> Chunk:
        """Consecutive chunks as one."""
        if len(parts) == 1:
            return parts[0]
        fixes = Fixes(*(np.concatenate(columns) for columns in zip(*(p.fixes for p in parts))))
        return Chunk(
            parts[0].first,
            parts[-1].end - parts[0].first,
            fixes,
            np.concatenate([p.index for p in parts]),
            [i for p in parts for i in p.malformed],
        )


def decode_chunk(raw: Sequence[Any], first: int) -> Chunk:
    """Elements first, first + 1, ... of a track document -> a Chunk."""
    fixes, index, malformed = decode_all(raw, first)
    return Chunk(first, len(raw), fixes, index, malformed)


class _Fix(msgspec.Struct):
    """The common shape of a track-document element, as JSON: numbers (optional ones null or absent)."""

    t: float
    lat: float
    lng: float
    speed: float | None = None
    heading: float | None = None
    accuracy: float | None = None
    alt: float | None = None


_JSON_FIXES = msgspec.json.Decoder(list[_Fix])


def decode_json(text: str | bytes, skip: int, first: int) -> Chunk | None:
    """Elements [skip:] of a JSON array of track-document elements (pycrdt's `to_json` of the points
    array) as the Chunk starting at element index `first`, decoded by the rules of `decode_all`
    without a Python dict per element (~2.4 against ~3-5 us a point with pycrdt's delta); None when
    any element is not of the common shape (an ISO time, a boolean, not an object...): the caller
    decodes dicts then."""
    try:
        fixes = _JSON_FIXES.decode(text)[skip:]
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    n = len(fixes)
    t, lat, lng = (np.fromiter(map(get, fixes), np.float64, n) for get in _GETTERS[:3])
    optional = [np.array(list(map(get, fixes)), dtype=np.float64) for get in _GETTERS[3:]]  # None -> NaN
    return Chunk(first, n, *_checked(t, lat, lng, optional, first))


_GETTERS = [operator.attrgetter(name) for name in FIELDS]  # _Fix's fields are the element's keys


def _decode_each(raw: Sequence[Any], first_index: int) -> tuple[Fixes, np.ndarray, list[int]]:
    points, index, malformed = [], [], []
    for i, element in enumerate(raw, start=first_index):
        p = decode(element)
        if p.__class__ is Point:
            points.append(p)
            index.append(i)
        else:
            malformed.append(i)
    if points:
        ms = np.array([min(max(p.ms, -_MS_BOUND), _MS_BOUND) for p in points], dtype=np.int64)
        fixes = columns(points)._replace(ms=ms)
    else:
        fixes = columns([])
    return fixes, np.array(index, dtype=np.int64), malformed
