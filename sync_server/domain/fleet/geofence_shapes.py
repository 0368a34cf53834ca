"""Geofence geometry rules: circles (center + radius in metres) and GeoJSON polygons, and the
bounding box stored beside each so point checks can skip far-away fences cheaply.

Polygon rules (RFC 7946): `{"type": "Polygon", "coordinates": [ring, hole, ...]}`; each ring is a
list of [lng, lat] positions, closed (first == last), with at least 4 positions; lng in
[-180, 180], lat in [-90, 90]. `polygon_problems` returns (path, message) pairs so the API can
answer 422 naming the exact position at fault.
"""

from __future__ import annotations

import math
from typing import Any

EARTH_RADIUS_M = 6_371_008.8
MAX_RING_POSITIONS = 10_000
MAX_RINGS = 100

BBox = tuple[float, float, float, float]  # min_lat, min_lng, max_lat, max_lng


def polygon_problems(coordinates: Any) -> list[tuple[str, str]]:
    """Everything wrong with a Polygon's `coordinates`; empty when valid."""
    if not isinstance(coordinates, list) or not coordinates:
        return [("coordinates", "must be a non-empty list of linear rings")]
    if len(coordinates) > MAX_RINGS:
        return [("coordinates", f"at most {MAX_RINGS} rings")]
    problems: list[tuple[str, str]] = []
    for r, ring in enumerate(coordinates):
        where = f"coordinates.{r}"
        if not isinstance(ring, list) or len(ring) < 4:
            problems.append((where, "a linear ring needs at least 4 positions"))
            continue
        if len(ring) > MAX_RING_POSITIONS:
            problems.append((where, f"at most {MAX_RING_POSITIONS} positions per ring"))
            continue
        bad = False
        for p, pos in enumerate(ring):
            at = f"{where}.{p}"
            if (
                not isinstance(pos, (list, tuple))
                or not 2 <= len(pos) <= 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pos)
            ):
                problems.append((at, "a position is [lng, lat] (optionally [lng, lat, alt]) of finite numbers"))
                bad = True
                continue
            lng, lat = pos[0], pos[1]
            if not -180 <= lng <= 180:
                problems.append((f"{at}.0", "longitude must be between -180 and 180"))
                bad = True
            if not -90 <= lat <= 90:
                problems.append((f"{at}.1", "latitude must be between -90 and 90"))
                bad = True
        if not bad and list(ring[0][:2]) != list(ring[-1][:2]):
            problems.append((where, "a linear ring must be closed (first position equal to the last)"))
        elif not bad and len({(p[0], p[1]) for p in ring}) < 3:
            problems.append((where, "a linear ring needs at least 3 distinct positions"))
    return problems


def polygon_bbox(coordinates: list) -> BBox:
    outer = coordinates[0]
    lats = [p[1] for p in outer]
    lngs = [p[0] for p in outer]
    return min(lats), min(lngs), max(lats), max(lngs)


def circle_bbox(lat: float, lng: float, radius_m: float) -> BBox:
    """A box that contains the circle (wider near the poles; the whole longitude range over a pole
    or across the antimeridian, so the pre-check never misses)."""
    dlat = math.degrees(radius_m / EARTH_RADIUS_M)
    min_lat, max_lat = lat - dlat, lat + dlat
    if min_lat <= -90 or max_lat >= 90:
        return max(min_lat, -90.0), -180.0, min(max_lat, 90.0), 180.0
    dlng = math.degrees(radius_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    min_lng, max_lng = lng - dlng, lng + dlng
    if min_lng < -180 or max_lng > 180:
        return min_lat, -180.0, max_lat, 180.0
    return min_lat, min_lng, max_lat, max_lng
