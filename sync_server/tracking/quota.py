"""The plan's gps_points_per_day quota, counted per UTC day of the fix (the day the point belongs
to, so a device uploading last week's points after days offline uses last week's allowance).

Points past the quota are not materialized: they are counted as `quota_exceeded` rejections in
usage_metrics and in the batch log, stay in the track document, and show in
GET /api/v1/tracking/usage (`quota_exceeded: true`, `remaining: 0`).
"""
from __future__ import annotations

from typing import Mapping

from ..plans import GPS_POINTS_METRIC
from .points import Point

QUOTA_EXCEEDED = "quota_exceeded"
POINTS_METRIC = GPS_POINTS_METRIC  # usage_metrics: materialized points per day
REJECTED_PREFIX = "gps_points_rejected."  # usage_metrics: + reason, rejected points per day


def rejected_metric(reason: str) -> str:
    return REJECTED_PREFIX + reason


def cut(points: list[Point], limit: int, used: Mapping[int, int], rejected: dict) -> list[Point]:
    """Keep, day by day in time order, only as many points as the day's remaining allowance; count
    the rest into `rejected[(day, "quota_exceeded")]`. `used` maps day number -> points already stored."""
    remaining: dict[int, int] = {}
    kept: list[Point] = []
    for p in points:
        day = p.ms // 86_400_000
        left = remaining.get(day)
        if left is None:
            left = max(0, limit - used.get(day, 0))
        if left > 0:
            kept.append(p)
            remaining[day] = left - 1
        else:
            remaining[day] = 0
            key = (day, QUOTA_EXCEEDED)
            rejected[key] = rejected.get(key, 0) + 1
    return kept
