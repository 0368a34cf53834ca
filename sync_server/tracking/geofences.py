"""Geofence containment and enter/exit events.

Shapes: a circle (centre + radius, geodesic distance: haversine decides when clearly inside or
outside, geopy's WGS-84 geodesic decides near the rim) and a GeoJSON Polygon (ray casting in
lng/lat, holes honoured, after a bounding-box pre-check). A coarse grid over the bounding boxes keeps
a fix from being tested against every geofence of the customer.

State: the set of geofences a vehicle is inside is a function of its latest fix, so the state just
before any instant is that of the stored fix just before it. A batch (live or backfilled) is
evaluated from that state over the merged sequence of its fixes and the stored ones in its span,
through the first stored fix after it (whose event may change). The events of that window are then
the result: recorded ones that no longer hold are removed, missing ones inserted. The same input
always yields the same events, so replays and restarts never duplicate them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .distance import SPHERE_ERROR, geodesic, haversine

CELL_DEG = 0.01  # grid cell size for the candidate index (~1.1 km of latitude)
MAX_CELLS = 2500  # a shape spanning more cells (> ~0.5 x 0.5 degrees) is tested for every fix instead
_EMPTY: frozenset = frozenset()


@dataclass(frozen=True)
class Event:
    geofence_id: Any
    event: str  # "enter" | "exit"
    ms: int
    lat: float
    lng: float

    @property
    def key(self) -> tuple:
        return (str(self.geofence_id), self.ms, self.event)


_A = 6_378_137.0  # WGS-84
_E2 = 0.00669437999014
LOCAL_RADIUS_M = 10_000.0  # below this a circle uses its local ellipsoidal scale (error < 1e-4 r)


class Circle:
    """A centre and a radius in metres, tested by geodesic distance on the WGS-84 ellipsoid.

    Up to 10 km the distance is the local ellipsoidal approximation (metres per degree of latitude
    and longitude at the centre, from the meridional and prime-vertical radii): its error stays
    under 1e-4 of the radius, so only fixes within that band of the rim need the exact geodesic.
    Larger circles use haversine with a 0.6% band."""

    __slots__ = ("id", "lat", "lng", "radius", "bbox", "_inner2", "_outer2", "_ky", "_kx", "_local")

    def __init__(self, gid: Any, lat: float, lng: float, radius: float) -> None:
        self.id = gid
        self.lat = lat
        self.lng = lng
        self.radius = radius
        dlat = math.degrees(radius * (1 + SPHERE_ERROR) / 6_356_752.0) + 1e-6
        coslat = math.cos(math.radians(min(89.9, abs(lat) + dlat)))
        dlng = 180.0 if coslat < 1e-6 else min(180.0, dlat / coslat + 1e-6)
        self.bbox = (lat - dlat, lng - dlng, lat + dlat, lng + dlng)
        self._local = radius <= LOCAL_RADIUS_M and abs(lat) < 80
        if self._local:
            sin = math.sin(math.radians(lat))
            w = math.sqrt(1 - _E2 * sin * sin)
            self._ky = math.radians(_A * (1 - _E2) / (w * w * w))  # metres per degree of latitude
            self._kx = math.radians(_A / w)  # times cos(latitude): metres per degree of longitude
            band = radius * 1e-4 + 0.01
        else:
            self._ky = self._kx = 0.0
            band = radius * SPHERE_ERROR + 0.5
        self._inner2 = max(0.0, radius - band) ** 2
        self._outer2 = (radius + band) ** 2

    def contains(self, lat: float, lng: float) -> bool:
        min_lat, min_lng, max_lat, max_lng = self.bbox
        if not (min_lat <= lat <= max_lat and min_lng <= lng <= max_lng):
            return False
        if self._local:
            dy = (lat - self.lat) * self._ky
            dx = (lng - self.lng) * self._kx * math.cos(math.radians((lat + self.lat) * 0.5))
            d2 = dx * dx + dy * dy
        else:
            d2 = haversine(self.lat, self.lng, lat, lng) ** 2
        if d2 <= self._inner2:
            return True
        if d2 > self._outer2:
            return False
        return geodesic(self.lat, self.lng, lat, lng) <= self.radius


class Polygon:
    __slots__ = ("id", "rings", "bbox")

    def __init__(self, gid: Any, rings: Sequence[Sequence[Sequence[float]]]) -> None:
        self.id = gid
        # GeoJSON positions are [lng, lat]; keep (lng, lat) pairs, first ring outer, the rest holes.
        self.rings = [[(float(p[0]), float(p[1])) for p in ring] for ring in rings if len(ring) >= 3]
        if not self.rings:
            raise ValueError("polygon needs an outer ring of at least 3 positions")
        outer = self.rings[0]
        self.bbox = (min(p[1] for p in outer), min(p[0] for p in outer), max(p[1] for p in outer),
                     max(p[0] for p in outer))

    def contains(self, lat: float, lng: float) -> bool:
        min_lat, min_lng, max_lat, max_lng = self.bbox
        if not (min_lat <= lat <= max_lat and min_lng <= lng <= max_lng):
            return False
        if not _in_ring(self.rings[0], lng, lat):
            return False
        return not any(_in_ring(hole, lng, lat) for hole in self.rings[1:])


def _in_ring(ring: list[tuple[float, float]], x: float, y: float) -> bool:
    inside = False
    j = len(ring) - 1
    for i in range(len(ring)):
        xi, yi = ring[i]
        xj, yj = ring[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def shape_from_row(row: Any) -> Circle | Polygon:
    if row["kind"] == "circle":
        return Circle(row["id"], row["center_lat"], row["center_lng"], row["radius_meters"])
    polygon = row["polygon"]
    coords = polygon.get("coordinates") if isinstance(polygon, dict) else polygon
    return Polygon(row["id"], coords)


class GeofenceSet:
    """The active geofences of one customer with a grid index over their bounding boxes."""

    def __init__(self, shapes: Iterable[Circle | Polygon], fingerprint: Any = None) -> None:
        self.shapes = list(shapes)
        self.fingerprint = fingerprint
        self._grid: dict[tuple[int, int], list] = {}
        self._wide: list = []
        for shape in self.shapes:
            min_lat, min_lng, max_lat, max_lng = shape.bbox
            if (_cell(max_lat) - _cell(min_lat) + 1) * (_cell(max_lng) - _cell(min_lng) + 1) > MAX_CELLS:
                self._wide.append(shape)
                continue
            for cy in range(int(_cell(min_lat)), int(_cell(max_lat)) + 1):
                for cx in range(int(_cell(min_lng)), int(_cell(max_lng)) + 1):
                    self._grid.setdefault((float(cy), float(cx)), []).append(shape)

    def __len__(self) -> int:
        return len(self.shapes)

    def inside(self, lat: float, lng: float) -> frozenset:
        candidates = self._grid.get((lat // CELL_DEG, lng // CELL_DEG))
        if self._wide:
            candidates = [*(candidates or ()), *self._wide]
        if not candidates:
            return _EMPTY
        return frozenset([s.id for s in candidates if s.contains(lat, lng)])


def _cell(value: float) -> float:
    return value // CELL_DEG  # the same expression as the lookup in GeofenceSet.inside


def transitions(fences: GeofenceSet, before: frozenset, sequence: Iterable) -> list[Event]:
    """Enter/exit events along a time-ordered sequence of fixes (objects with ms, lat, lng and
    optionally `inside` computed ahead for this geofence set), starting inside `before`."""
    events: list[Event] = []
    current = before
    inside = fences.inside
    for p in sequence:
        ms, lat, lng = p.ms, p.lat, p.lng
        now = getattr(p, "inside", None)
        if now is None:
            now = inside(lat, lng)
        if now != current:
            for gid in sorted(current - now, key=str):
                events.append(Event(gid, "exit", ms, lat, lng))
            for gid in sorted(now - current, key=str):
                events.append(Event(gid, "enter", ms, lat, lng))
            current = now
    return events
