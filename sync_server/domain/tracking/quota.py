"""The plan's gps_points_per_day quota, counted per UTC day of the fix (the day the point belongs
to, so a device uploading last week's points after days offline uses last week's allowance).

Points past the quota are not materialized: they are counted as `quota_exceeded` rejections in
usage_metrics and in the batch log, stay in the track document, and show in
GET /api/v1/tracking/usage (`quota_exceeded: true`, `remaining: 0`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from storage import fleet_events as fleet_event_store
from sync_server.domain.billing.plans import GPS_POINTS_METRIC
from sync_server.domain.tracking.points import DAY_MS, day_of, time_of

QUOTA_EXCEEDED = "quota_exceeded"
QUOTA_REACHED = "quota.reached"  # the fleet event: once per customer and UTC day of the fixes
POINTS_METRIC = GPS_POINTS_METRIC  # usage_metrics: materialized points per day
REJECTED_PREFIX = "gps_points_rejected."  # usage_metrics: + reason, rejected points per day


def rejected_metric(reason: str) -> str:
    return REJECTED_PREFIX + reason


def _days(ms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(day numbers, first position of each, count of each) of time-ordered fixes."""
    return np.unique(ms // DAY_MS, return_index=True, return_counts=True)


def cut(ms: np.ndarray, limit: int, used: Mapping[int, int]) -> np.ndarray:
    """Which of the time-ordered fixes (epoch ms) to keep: day by day, only as many as the day's
    remaining allowance, the earliest first (the rest are `quota_exceeded`). `used` maps day
    number -> points already stored. Returns the boolean mask of kept fixes."""
    keep = np.ones(len(ms), dtype=bool)
    for day, first, n in zip(*(a.tolist() for a in _days(ms))):
        left = max(0, limit - used.get(day, 0))
        if n > left:
            keep[first + left : first + n] = False
    return keep


def fits(ms: np.ndarray, limit: int, used: Mapping[int, int], headroom: float) -> bool:
    """Whether every day's fixes fit its remaining allowance with `headroom` (a share of the limit)
    still free afterwards."""
    days, _, counts = _days(ms)
    return all(used.get(day, 0) + n <= limit * (1 - headroom) for day, n in zip(days.tolist(), counts.tolist()))


def per_day(ms: np.ndarray) -> dict[int, int]:
    """Fixes per day number."""
    days, _, counts = _days(ms)
    return dict(zip(days.tolist(), counts.tolist()))


async def reached(conn: Any, customer_id, day: int, limit: int) -> Any:
    """Record quota.reached for the day (number) once; the Recorded event when this call did."""
    from sync_server.domain.tracking.fleet_events import Recorded

    ms = day * DAY_MS
    data = {"day": day_of(ms).isoformat(), "limit": limit, "metric": POINTS_METRIC}
    event_id = await fleet_event_store.insert_customer_event(conn, customer_id, QUOTA_REACHED, time_of(ms), data)
    return Recorded(event_id, None, QUOTA_REACHED, ms, None, None, data) if event_id is not None else None
