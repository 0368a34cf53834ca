"""Validation and plausibility filters. A rejected fix is never silently lost: every rejection has a
reason, counted in usage_metrics and logged per batch; the point itself stays in the CRDT document.

Two kinds: per-point checks (need nothing but the fix and the clock) and sequence checks
(duplicates and implied-speed jumps), which need the fixes around it in time, stored ones included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from .distance import EARTH_RADIUS_M
from .points import DAY_MS, Point

OUT_OF_RANGE = "out_of_range"
NULL_ISLAND = "null_island"
FUTURE = "future"
OUTSIDE_DAY = "outside_day"
TOO_OLD = "too_old"
INACCURATE = "inaccurate"
DUPLICATE = "duplicate"
JUMP = "jump"

REASONS = ("malformed", OUT_OF_RANGE, NULL_ISLAND, FUTURE, OUTSIDE_DAY, TOO_OLD, INACCURATE, DUPLICATE, JUMP,
           "quota_exceeded")


@dataclass(frozen=True)
class Rules:
    """The configurable limits (TRACKING_* settings)."""

    max_future_ms: int = 300_000  # a fix this far ahead of the server clock is rejected
    day_slack_ms: int = 3_600_000  # a track doc's fixes may stray this far outside its UTC day
    max_accuracy_m: float = 1_000.0  # worse (larger) reported accuracy is rejected
    max_speed_mps: float = 400 / 3.6  # implied speed from the previous fix above this is a jump


@dataclass(frozen=True)
class Window:
    """What one batch accepts in time: [start_ms, end_ms) plus the clock and retention bounds."""

    now_ms: int
    oldest_ms: int  # older fixes are past the plan's retention
    day_start_ms: int | None = None  # the track document's day, if the batch comes from one
    day_end_ms: int | None = None


def day_window(day_number: int, now_ms: int, oldest_ms: int, rules: Rules) -> Window:
    start = day_number * DAY_MS
    return Window(now_ms, oldest_ms, start - rules.day_slack_ms, start + DAY_MS + rules.day_slack_ms)


def check(p: Point, window: Window, rules: Rules) -> str | None:
    """The per-point checks, in order; returns the first failing reason or None."""
    lat, lng = p.lat, p.lng
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lng <= 180.0):
        return OUT_OF_RANGE
    if lat == 0.0 and lng == 0.0:
        return NULL_ISLAND
    ms = p.ms
    if ms > window.now_ms + rules.max_future_ms:
        return FUTURE
    if window.day_start_ms is not None and not (window.day_start_ms <= ms < window.day_end_ms):
        return OUTSIDE_DAY
    if ms < window.oldest_ms:
        return TOO_OLD
    if p.accuracy is not None and p.accuracy > rules.max_accuracy_m:
        return INACCURATE
    return None


def sequence(new: list[Point], stored: Iterable[Point], before: Point | None, rules: Rules,
             rejected: dict) -> list[Point]:
    """Duplicates and jumps over time-ordered `new` fixes, walked together with the vehicle's stored
    fixes in the same span (`stored`, time-ordered) and the stored fix just `before` the span.
    Counts rejections into `rejected[(day, reason)]`; returns the accepted fixes in time order."""
    stored_iter = iter(stored)
    nxt = next(stored_iter, None)
    prev = before
    max_speed = rules.max_speed_mps
    # Implied speed by the equirectangular approximation: exact enough between consecutive fixes
    # (well under 1% below ~100 km), and no trigonometry but one cosine per fix.
    k = math.pi / 180 * EARTH_RADIUS_M
    cos = math.cos
    accepted: list[Point] = []
    append = accepted.append
    for p in new:
        ms = p.ms
        while nxt is not None and nxt.ms < ms:
            prev = nxt
            nxt = next(stored_iter, None)
        reason = None
        if (nxt is not None and nxt.ms == ms) or (prev is not None and prev.ms == ms):
            reason = DUPLICATE
        elif prev is not None:
            reach = max_speed * (ms - prev.ms) / 1000.0 + 1.0
            dy = (p.lat - prev.lat) * k
            dl = p.lng - prev.lng
            if dl > 180.0:
                dl -= 360.0
            elif dl < -180.0:
                dl += 360.0
            dx = dl * k * cos((p.lat + prev.lat) * 0.008726646259971648)  # pi/360
            if dx * dx + dy * dy > reach * reach:
                reason = JUMP
        if reason is None:
            append(p)
            prev = p
        else:
            key = (p.ms // DAY_MS, reason)
            rejected[key] = rejected.get(key, 0) + 1
    return accepted
