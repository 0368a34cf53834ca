"""Validation and plausibility filters. A rejected fix is never silently lost: every rejection has a
reason, counted in usage_metrics and logged per batch; the point itself stays in the CRDT document.

Two kinds: per-point checks (need nothing but the fix and the clock) and sequence checks
(duplicates and implied-speed jumps), which need the fixes around it in time, stored ones included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from storage.positions import Fixes
from sync_server.domain.tracking.distance import EARTH_RADIUS_M
from sync_server.domain.tracking.points import DAY_MS, Point

OUT_OF_RANGE = "out_of_range"
NULL_ISLAND = "null_island"
FUTURE = "future"
OUTSIDE_DAY = "outside_day"
TOO_OLD = "too_old"
INACCURATE = "inaccurate"
DUPLICATE = "duplicate"
JUMP = "jump"

REASONS = (
    "malformed",
    OUT_OF_RANGE,
    NULL_ISLAND,
    FUTURE,
    OUTSIDE_DAY,
    TOO_OLD,
    INACCURATE,
    DUPLICATE,
    JUMP,
    "quota_exceeded",
)


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


def check_all(fixes: Fixes, window: Window, rules: Rules) -> np.ndarray:
    """The per-point checks over columns: for each fix the index into CHECKS of the first failing
    one, or -1 when it passes them all."""
    lat, lng, ms = fixes.lat, fixes.lng, fixes.ms
    failing = [
        ~((lat >= -90.0) & (lat <= 90.0) & (lng >= -180.0) & (lng <= 180.0)),  # OUT_OF_RANGE
        (lat == 0.0) & (lng == 0.0),  # NULL_ISLAND
        ms > window.now_ms + rules.max_future_ms,  # FUTURE
        (
            ~((ms >= window.day_start_ms) & (ms < window.day_end_ms))
            if window.day_start_ms is not None
            else np.zeros(len(ms), dtype=bool)
        ),  # OUTSIDE_DAY
        ms < window.oldest_ms,  # TOO_OLD
        fixes.accuracy > rules.max_accuracy_m,  # INACCURATE (NaN, i.e. not reported, passes)
    ]
    return np.select(failing, range(len(CHECKS)), -1)


CHECKS = (OUT_OF_RANGE, NULL_ISLAND, FUTURE, OUTSIDE_DAY, TOO_OLD, INACCURATE)
# Implied speed by the equirectangular approximation: exact enough between consecutive fixes (well
# under 1% below ~100 km), and no trigonometry but one cosine per fix.
_K = math.pi / 180 * EARTH_RADIUS_M
_HALF_RAD = 0.008726646259971648  # pi/360


def _jumps(ms, lat, lng, pms, plat, plng, max_speed: float):
    """Whether each fix is further from its predecessor than `max_speed` allows (+1 m of slack).
    Works elementwise on numpy columns and on plain floats alike."""
    reach = max_speed * (ms - pms) / 1000.0 + 1.0
    dy = (lat - plat) * _K
    dl = lng - plng
    dl = np.where(dl > 180.0, dl - 360.0, np.where(dl < -180.0, dl + 360.0, dl))
    dx = dl * _K * np.cos((lat + plat) * _HALF_RAD)
    return dx * dx + dy * dy > reach * reach


def sequence(fixes: Fixes, stored: list[Point], before: Point | None, rules: Rules) -> np.ndarray:
    """Duplicates and jumps over time-ordered fixes, walked together with the vehicle's stored fixes
    in the same span (`stored`, time-ordered) and the stored fix just `before` the span. Each fix is
    compared with the last ACCEPTED one before it. Returns per fix "" (accepted), DUPLICATE or JUMP.

    Fast path (nothing stored inside the span, the usual append): every fix is checked against its
    predecessor at once; only from a failing fix on, where the predecessor may have been rejected,
    are fixes walked one by one, and only until the walk is back in step with the vectorised check."""
    n = len(fixes.ms)
    verdict = np.full(n, "", dtype=object)
    if not n:
        return verdict
    if stored:
        return _walk_with_stored(fixes, stored, before, rules, verdict)
    ms, lat, lng = fixes.ms, fixes.lat, fixes.lng
    max_speed = rules.max_speed_mps
    flagged = np.zeros(n, dtype=bool)
    if n > 1:
        flagged[1:] = (ms[1:] == ms[:-1]) | _jumps(ms[1:], lat[1:], lng[1:], ms[:-1], lat[:-1], lng[:-1], max_speed)
    if before is not None:
        flagged[0] = True  # the walk checks the first against the stored fix
    starts = np.flatnonzero(flagged)
    if not len(starts):
        return verdict
    msl, latl, lngl = ms.tolist(), lat.tolist(), lng.tolist()

    def failure(i: int, prev: int) -> str:
        if prev < 0:
            if before is None:
                return ""
            pms, plat, plng = before.ms, before.lat, before.lng
        else:
            pms, plat, plng = msl[prev], latl[prev], lngl[prev]
        if msl[i] == pms:
            return DUPLICATE
        return JUMP if _jumps(msl[i], latl[i], lngl[i], pms, plat, plng, max_speed) else ""

    i, prev, k = int(starts[0]), int(starts[0]) - 1, 0
    while i < n:
        if prev == i - 1 and not flagged[i]:  # back in step: jump to the next flagged fix
            k = int(np.searchsorted(starts, i))
            if k >= len(starts):
                break
            i = int(starts[k])
            prev = i - 1
            continue
        reason = failure(i, prev)
        if reason:
            verdict[i] = reason
        else:
            prev = i
        i += 1
    return verdict


def _walk_with_stored(
    fixes: Fixes, stored: list[Point], before: Point | None, rules: Rules, verdict: np.ndarray
) -> np.ndarray:
    """The one-by-one walk over new and stored fixes together (backfills into stored spans)."""
    stored_iter = iter(stored)
    nxt = next(stored_iter, None)
    prev = (before.ms, before.lat, before.lng) if before is not None else None
    max_speed = rules.max_speed_mps
    for i, (ms, lat, lng) in enumerate(zip(fixes.ms.tolist(), fixes.lat.tolist(), fixes.lng.tolist())):
        while nxt is not None and nxt.ms < ms:
            prev = (nxt.ms, nxt.lat, nxt.lng)
            nxt = next(stored_iter, None)
        if (nxt is not None and nxt.ms == ms) or (prev is not None and prev[0] == ms):
            verdict[i] = DUPLICATE
        elif prev is not None and _jumps(ms, lat, lng, *prev, max_speed):
            verdict[i] = JUMP
        else:
            prev = (ms, lat, lng)
    return verdict
