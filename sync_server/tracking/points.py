"""A GPS fix as the pipeline carries it, and the decoding of the track-document point format.

Track documents hold JSON objects `{"t", "lat", "lng", "speed", "heading", "accuracy", "alt"}`:
`t` is ISO-8601 (no offset = UTC) or epoch milliseconds (Yjs numbers arrive as floats), speed is
m/s, heading degrees, accuracy and altitude metres; only t, lat and lng are required. Decoding only
checks types; ranges and plausibility are the filters' business.
"""
from __future__ import annotations

import datetime as dt
import math
from typing import Any

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
DAY_MS = 86_400_000
_timedelta = dt.timedelta

MALFORMED = "malformed"


class Point:
    """One fix. `ms` (epoch milliseconds) orders and compares; `time` is what PostgreSQL stores."""

    __slots__ = ("ms", "lat", "lng", "speed", "heading", "accuracy", "alt", "idx", "_time")

    def __init__(self, ms: int, lat: float, lng: float, speed: float | None = None, heading: float | None = None,
                 accuracy: float | None = None, alt: float | None = None, idx: int = -1) -> None:
        self.ms = ms
        self.idx = idx  # position in the track document's array (-1: not from a document)
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
            self._time = EPOCH + _timedelta(milliseconds=self.ms)
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


def _optional(raw: dict, key: str) -> float | None | bool:
    """The optional numeric field: a float, None when absent/null, False when present but not a number."""
    value = raw.get(key)
    if value is None:
        return None
    number = _number(value)
    return False if number is None else number


def from_record(row: Any) -> Point:
    """A stored fix (time, lat, lng, speed, heading, accuracy, altitude) -> Point."""
    p = Point(ms_from_datetime(row["time"]), row["lat"], row["lng"], row["speed"], row["heading"], row["accuracy"],
              row["altitude"])
    p._time = row["time"]
    return p


def decode(raw: Any) -> Point | str:
    """A track-document element -> Point, or the rejection reason `malformed`."""
    if type(raw) is not dict:
        return MALFORMED
    ms = parse_time(raw.get("t"))
    lat = _number(raw.get("lat"))
    lng = _number(raw.get("lng"))
    if ms is None or lat is None or lng is None:
        return MALFORMED
    speed = _optional(raw, "speed")
    heading = _optional(raw, "heading")
    accuracy = _optional(raw, "accuracy")
    alt = _optional(raw, "alt")
    if speed is False or heading is False or accuracy is False or alt is False:
        return MALFORMED
    return Point(ms, lat, lng, speed, heading, accuracy, alt)
