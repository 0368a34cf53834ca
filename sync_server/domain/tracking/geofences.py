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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sync_server.domain.tracking.distance import SPHERE_ERROR, geodesic, haversine_all

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


class _Shape:
    """What circles and polygons share: a bounding box pre-check over numpy columns; `_near` decides
    for the fixes inside the box."""

    __slots__ = ()
    bbox: tuple[float, float, float, float]  # min_lat, min_lng, max_lat, max_lng (a slot of each shape)

    def contains(self, lat: float, lng: float) -> bool:
        return bool(self.contains_all(np.array([lat], dtype=np.float64), np.array([lng], dtype=np.float64))[0])

    def contains_all(self, lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
        """Boolean mask over the fixes (lat, lng: float64 columns) inside the shape."""
        min_lat, min_lng, max_lat, max_lng = self.bbox
        out = np.zeros(len(lat), dtype=bool)
        near = np.flatnonzero((lat >= min_lat) & (lat <= max_lat) & (lng >= min_lng) & (lng <= max_lng))
        if len(near):
            out[near] = self._near(lat[near], lng[near])
        return out

    def _near(self, lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
        """Boolean mask over fixes already inside the bounding box."""
        raise NotImplementedError


class Circle(_Shape):
    """A centre and a radius in metres, tested by geodesic distance on the WGS-84 ellipsoid.

    Up to 10 km the distance is the local ellipsoidal approximation (metres per degree of latitude
    and longitude at the centre, from the meridional and prime-vertical radii): its error stays
    under 1e-4 of the radius, so only fixes within that band of the rim need the exact geodesic.
    Larger circles use haversine with a 0.6% band. Fixes are tested as numpy columns: a batch of
    50,000 costs a few array passes per circle, and the geodesic runs only for the few in the band."""

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

    def _near(self, lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
        if self._local:
            dy = (lat - self.lat) * self._ky
            dx = (lng - self.lng) * self._kx * np.cos(np.radians((lat + self.lat) * 0.5))
            d2 = dx * dx + dy * dy
        else:
            d2 = haversine_all(self.lat, self.lng, lat, lng) ** 2
        inside = d2 <= self._inner2
        for i in np.flatnonzero((d2 > self._inner2) & (d2 <= self._outer2)):  # the rim band: exact geodesic
            inside[i] = geodesic(self.lat, self.lng, float(lat[i]), float(lng[i])) <= self.radius
        return inside


class Polygon(_Shape):
    __slots__ = ("id", "rings", "bbox")

    def __init__(self, gid: Any, rings: Sequence[Sequence[Sequence[float]]]) -> None:
        self.id = gid
        # GeoJSON positions are [lng, lat]; keep (lng, lat) pairs, first ring outer, the rest holes.
        self.rings = [[(float(p[0]), float(p[1])) for p in ring] for ring in rings if len(ring) >= 3]
        if not self.rings:
            raise ValueError("polygon needs an outer ring of at least 3 positions")
        outer = self.rings[0]
        self.bbox = (
            min(p[1] for p in outer),
            min(p[0] for p in outer),
            max(p[1] for p in outer),
            max(p[0] for p in outer),
        )

    def _near(self, lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
        inside = _in_ring(self.rings[0], lng, lat)
        for hole in self.rings[1:]:
            inside &= ~_in_ring(hole, lng, lat)
        return inside


def _in_ring(ring: list[tuple[float, float]], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ray casting (even-odd) of every (x, y) against one ring, an edge at a time."""
    inside = np.zeros(len(x), dtype=bool)
    j = len(ring) - 1
    with np.errstate(divide="ignore", invalid="ignore"):  # horizontal edges never cross (first test)
        for i in range(len(ring)):
            xi, yi = ring[i]
            xj, yj = ring[j]
            inside ^= ((yi > y) != (yj > y)) & (x < (xj - xi) * (y - yi) / (yj - yi) + xi)
            j = i
    return inside


def shape_from_row(row: Any) -> Circle | Polygon:
    if row["kind"] == "circle":
        return Circle(row["id"], row["center_lat"], row["center_lng"], row["radius_meters"])
    polygon = row["polygon"]
    coords = polygon["coordinates"] if isinstance(polygon, dict) else polygon
    return Polygon(row["id"], coords)


class GeofenceSet:
    """The active geofences of one customer with a grid index over their bounding boxes: a batch's
    fixes are grouped by grid cell, so each shape is tested only against the fixes in its cells."""

    def __init__(self, shapes: Iterable[Circle | Polygon], fingerprint: Any = None) -> None:
        self.shapes = list(shapes)
        self.fingerprint = fingerprint
        self._grid: dict[tuple[float, float], list[int]] = {}  # cell -> indices into shapes
        self._wide: list[int] = []
        self._sets: dict[tuple, frozenset] = {}  # mask -> ids (ids_of)
        for k, shape in enumerate(self.shapes):
            min_lat, min_lng, max_lat, max_lng = shape.bbox
            if (_cell(max_lat) - _cell(min_lat) + 1) * (_cell(max_lng) - _cell(min_lng) + 1) > MAX_CELLS:
                self._wide.append(k)
                continue
            for cy in range(int(_cell(min_lat)), int(_cell(max_lat)) + 1):
                for cx in range(int(_cell(min_lng)), int(_cell(max_lng)) + 1):
                    self._grid.setdefault((float(cy), float(cx)), []).append(k)

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def words(self) -> int:
        """uint64 words per fix in a mask (one bit per shape)."""
        return max(1, (len(self.shapes) + 63) // 64)

    def inside(self, lat: float, lng: float) -> frozenset:
        return self.inside_all(np.array([lat], dtype=np.float64), np.array([lng], dtype=np.float64))[0]

    def inside_all(self, lat: np.ndarray, lng: np.ndarray) -> list[frozenset]:
        """For each fix (float64 columns), the ids of the geofences containing it."""
        masks = self.masks_all(lat, lng)
        if not len(masks):
            return []
        rows, of_fix = np.unique(masks, axis=0, return_inverse=True)
        sets = [self.ids_of(row) for row in rows]
        return [sets[j] for j in of_fix.reshape(-1).tolist()]

    def masks_all(self, lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
        """For each fix (float64 columns), the geofences containing it as a bit mask: an (n, words)
        uint64 array, bit k of the mask being shape k. Only the fixes in a shape's grid cells are
        tested against it, a few array passes per shape."""
        n = len(lat)
        masks = np.zeros((n, self.words), dtype=np.uint64)
        if not self.shapes or not n:
            return masks
        candidates: dict[int, list[np.ndarray]] = {k: [np.arange(n)] for k in self._wide}
        if self._grid:
            cy, cx = np.floor_divide(lat, CELL_DEG), np.floor_divide(lng, CELL_DEG)  # == _cell, elementwise
            cells, first, of_cell = np.unique(cy * 1e6 + cx, return_index=True, return_inverse=True)
            by_cell = np.lexsort((lng, of_cell))  # grouped by cell, by longitude within a cell
            cell_lng = lng[by_cell]
            bounds = np.concatenate(([0], np.cumsum(np.bincount(of_cell, minlength=len(cells))))).tolist()
            for c, i in enumerate(first.tolist()):
                shapes = self._grid.get((float(cy[i]), float(cx[i])))
                if not shapes:
                    continue
                lo, hi = bounds[c], bounds[c + 1]
                sorted_lng = cell_lng[lo:hi]
                for k in shapes:  # only the cell's fixes within the shape's longitudes
                    _, min_lng, _, max_lng = self.shapes[k].bbox
                    a = lo + int(np.searchsorted(sorted_lng, min_lng, side="left"))
                    b = lo + int(np.searchsorted(sorted_lng, max_lng, side="right"))
                    if b > a:
                        candidates.setdefault(k, []).append(by_cell[a:b])
        for k, parts in candidates.items():
            idx = parts[0] if len(parts) == 1 else np.concatenate(parts)
            hit = idx[self.shapes[k].contains_all(lat[idx], lng[idx])]
            if len(hit):
                masks[hit, k >> 6] |= np.uint64(1 << (k & 63))
        return masks

    def ids_of(self, mask: np.ndarray) -> frozenset:
        """The geofence ids of one fix's mask (remembered: a route passes the same places again)."""
        key = tuple(mask.tolist())
        found = self._sets.get(key)
        if found is None:
            ids = []
            for w, word in enumerate(key):
                while word:
                    low = word & -word
                    ids.append(self.shapes[w * 64 + low.bit_length() - 1].id)
                    word ^= low
            if len(self._sets) >= 4096:
                self._sets.clear()
            found = self._sets[key] = frozenset(ids)
        return found

    def mask_of(self, ids: Iterable[Any]) -> np.ndarray:
        """The mask of a set of geofence ids (ids not in this set are left out)."""
        mask = np.zeros(self.words, dtype=np.uint64)
        wanted = set(ids)
        for k, shape in enumerate(self.shapes):
            if shape.id in wanted:
                mask[k >> 6] |= np.uint64(1 << (k & 63))
        return mask


def _cell(value: float) -> float:
    return value // CELL_DEG  # Python's float floor division; numpy's floor_divide agrees elementwise


def transitions(
    fences: GeofenceSet,
    before: frozenset | np.ndarray,
    ms: np.ndarray,
    lat: np.ndarray,
    lng: np.ndarray,
    masks: np.ndarray | None = None,
) -> list[Event]:
    """Enter/exit events along time-ordered fixes (columns), starting inside `before` (geofence ids,
    or a mask); `masks` is each fix's mask when computed ahead for this geofence set. Only the fixes
    where the mask changes are looked at one by one."""
    if masks is None:
        masks = fences.masks_all(lat, lng)
    if not isinstance(before, np.ndarray):
        before = fences.mask_of(before)
    sequence = np.concatenate((before.reshape(1, -1), masks))
    events: list[Event] = []
    for k in np.flatnonzero((sequence[1:] != sequence[:-1]).any(axis=1)).tolist():
        was, now = fences.ids_of(sequence[k]), fences.ids_of(sequence[k + 1])
        t, a, b = int(ms[k]), float(lat[k]), float(lng[k])
        for gid in sorted(was - now, key=str):
            events.append(Event(gid, "exit", t, a, b))
        for gid in sorted(now - was, key=str):
            events.append(Event(gid, "enter", t, a, b))
    return events
