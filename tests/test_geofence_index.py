"""GeofenceSet.inside_all (grid cells, numpy columns) against a point-by-point reference written
independently here: exact geodesic distance for circles, scalar even-odd ray casting for polygons."""

from __future__ import annotations

import math
import random

import numpy as np

from sync_server.domain.tracking.distance import geodesic
from sync_server.domain.tracking.geofences import (
    Circle,
    GeofenceSet,
    Polygon,
    transitions,
)


def _ray_cast(ring, x, y) -> bool:
    inside = False
    for (xi, yi), (xj, yj) in zip(ring, ring[-1:] + ring[:-1]):
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
    return inside


def _reference(shape, lat: float, lng: float) -> bool:
    if isinstance(shape, Circle):
        return geodesic(shape.lat, shape.lng, lat, lng) <= shape.radius
    outer, *holes = shape.rings
    return _ray_cast(outer, lng, lat) and not any(_ray_cast(h, lng, lat) for h in holes)


def _square(lat, lng, half):
    return [
        (lng - half, lat - half),
        (lng + half, lat - half),
        (lng + half, lat + half),
        (lng - half, lat + half),
        (lng - half, lat - half),
    ]


def test_inside_all_matches_a_point_by_point_reference():
    rng = random.Random(11)
    shapes = []
    for i in range(40):  # small circles, some overlapping, across a few grid cells
        shapes.append(
            Circle(
                f"c{i}",
                52.5 + rng.uniform(-0.03, 0.03),
                13.4 + rng.uniform(-0.03, 0.03),
                rng.choice([20, 150, 800, 2_500]),
            )
        )
    shapes.append(Circle("big", 52.5, 13.4, 40_000))  # wider than the grid takes: tested for every fix
    shapes.append(Polygon("yard", [_square(52.51, 13.41, 0.006), _square(52.51, 13.41, 0.002)]))  # with a hole
    shapes.append(Polygon("wide", [_square(52.0, 13.0, 1.0)]))
    shapes.append(Polygon("tri", [[(13.38, 52.48), (13.42, 52.48), (13.40, 52.52), (13.38, 52.48)]]))
    fences = GeofenceSet(shapes)
    lat = np.array([52.5 + rng.uniform(-0.5, 0.5) ** 3 for _ in range(4_000)])
    lng = np.array([13.4 + rng.uniform(-0.5, 0.5) ** 3 for _ in range(4_000)])
    # and fixes right on circle rims, where the approximations hand over to the geodesic
    for shape in shapes[:40]:
        bearing = rng.uniform(0, 2 * math.pi)
        scale = shape.radius * rng.uniform(0.9999, 1.0001) / 111_200
        lat = np.append(lat, shape.lat + scale * math.cos(bearing))
        lng = np.append(lng, shape.lng + scale * math.sin(bearing) / math.cos(math.radians(shape.lat)))
    got = fences.inside_all(lat, lng)
    expected = [frozenset(s.id for s in shapes if _reference(s, float(a), float(b))) for a, b in zip(lat, lng)]
    assert got == expected
    assert sum(1 for s in expected if s) > 1_000 and sum(1 for s in expected if len(s) > 2) > 50  # a real test
    assert fences.inside(float(lat[0]), float(lng[0])) == expected[0]


def test_inside_all_with_no_fixes_or_no_geofences():
    empty = np.array([], dtype=np.float64)
    assert GeofenceSet([Circle("c", 1.0, 1.0, 10)]).inside_all(empty, empty) == []
    assert GeofenceSet([]).inside_all(np.array([1.0]), np.array([1.0])) == [frozenset()]


def test_transitions_over_masks_match_a_walk_over_reference_sets():
    """Enter/exit events from the bit masks (150 shapes: three 64-bit words a fix) equal those of a
    plain walk over each fix's reference set, starting inside a given set."""
    rng = random.Random(5)
    shapes = [
        Circle(
            f"c{i:03d}", 52.5 + rng.uniform(-0.02, 0.02), 13.4 + rng.uniform(-0.02, 0.02), rng.choice([50, 200, 600])
        )
        for i in range(150)
    ]
    fences = GeofenceSet(shapes)
    steps = np.cumsum(np.array([[rng.gauss(0, 3e-4), rng.gauss(0, 3e-4)] for _ in range(3_000)]), axis=0)
    lat, lng = 52.5 + steps[:, 0], 13.4 + steps[:, 1]
    ms = np.arange(3_000, dtype=np.int64) * 1000

    def far(s, a, b) -> bool:  # certainly outside (> 1.5 radii in either axis): spares the geodesic
        return abs(a - s.lat) * 111_000 > 1.5 * s.radius or abs(b - s.lng) * 67_000 > 1.5 * s.radius

    sets = [
        frozenset(s.id for s in shapes if not far(s, a, b) and _reference(s, a, b))
        for a, b in zip(lat.tolist(), lng.tolist())
    ]
    before = frozenset(["c000", "c149"])
    expected, current = [], before
    for k, now in enumerate(sets):
        expected += [(gid, "exit", int(ms[k])) for gid in sorted(current - now)]
        expected += [(gid, "enter", int(ms[k])) for gid in sorted(now - current)]
        current = now
    got = transitions(fences, before, ms, lat, lng)
    assert [(e.geofence_id, e.event, e.ms) for e in got] == expected
    assert len(expected) > 200 and any(int(gid[1:]) >= 128 for gid, _, _ in expected)  # the third word is used
    masks = fences.masks_all(lat, lng)
    assert masks.shape == (3_000, 3) and fences.ids_of(masks[-1]) == sets[-1]
    assert transitions(fences, fences.mask_of(before), ms, lat, lng, masks) == got
