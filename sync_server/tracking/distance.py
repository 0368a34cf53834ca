"""Distances on the Earth. Haversine (sphere, ~0.5% error, ~1 us) where precision does not matter or
is settled by a margin; geopy's geodesic (WGS-84 ellipsoid, exact, ~80 us) where it does."""
from __future__ import annotations

import math

from geopy.distance import geodesic as _geodesic

EARTH_RADIUS_M = 6_371_008.8
SPHERE_ERROR = 0.006  # haversine vs. WGS-84 geodesic stays within 0.5%; a little margin on top
_rad = math.radians
_sin = math.sin
_cos = math.cos
_asin = math.asin
_sqrt = math.sqrt


def haversine(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    p1 = _rad(lat1)
    p2 = _rad(lat2)
    a = _sin((p2 - p1) / 2) ** 2 + _cos(p1) * _cos(p2) * _sin(_rad(lng2 - lng1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * _asin(_sqrt(min(1.0, a)))


def geodesic(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    return _geodesic((lat1, lng1), (lat2, lng2)).meters
