"""The column steps of the tracking pipeline against element-by-element references: decoding (the
whole-batch path against `decode`, one element at a time) and the duplicate/jump walk (vectorised
with a sparse re-walk, against the plain walk over every fix)."""

from __future__ import annotations

import math
import random

import numpy as np

from sync_server.domain.tracking import filters
from sync_server.domain.tracking.points import Point, columns, decode, decode_all


def _reference_decode(raw, first_index=0):
    good, index, malformed = [], [], []
    for i, element in enumerate(raw, start=first_index):
        p = decode(element)
        if isinstance(p, Point):
            good.append(p)
            index.append(i)
        else:
            malformed.append(i)
    return good, index, malformed


def _same_columns(fixes, points):
    expected = columns(points)
    for got, want in zip(fixes, expected):
        np.testing.assert_array_equal(got, want)


def test_batch_decoding_matches_decoding_each_element():
    rng = random.Random(3)
    clean = [
        {
            "t": 1.7e12 + i * 1000.0,
            "lat": 52.5 + rng.uniform(-1, 1),
            "lng": 13.4 + rng.uniform(-1, 1),
            "speed": rng.choice([1.5, None, 3]),
            "heading": 90.0,
            **({"accuracy": 4.0} if i % 3 else {}),
        }
        for i in range(500)
    ]
    fixes, index, malformed = decode_all(clean, first_index=7)
    points, ref_index, ref_malformed = _reference_decode(clean, 7)
    _same_columns(fixes, points)
    assert index.tolist() == ref_index and malformed == ref_malformed == []
    # numbers that are not finite are malformed on the fast path too
    odd = clean[:20] + [
        {"t": math.inf, "lat": 1.0, "lng": 1.0},
        {"t": 1.7e12, "lat": math.nan, "lng": 1.0},
        {"t": 1.7e12, "lat": 1.0, "lng": 1.0, "alt": math.inf},
        {"t": 1e300, "lat": 1.0, "lng": 2.0},
        {"t": 5, "lat": 1, "lng": 2},
    ]
    fixes, index, malformed = decode_all(odd)
    points, ref_index, ref_malformed = _reference_decode(odd)
    assert malformed == ref_malformed == [20, 21, 22]
    assert index.tolist() == ref_index
    assert fixes.ms[-2] >= 10**15  # far future stays far future (rejected as such by the filters)
    _same_columns(fixes.take(slice(0, -2)), points[:-2])
    _same_columns(fixes.take(slice(-1, None)), points[-1:])
    # anything else (text times, a bool, a sent NaN among absent values, a non-object) goes element by element
    for stray in (
        {"t": "2025-01-01T00:00:00Z", "lat": 1.0, "lng": 1.0},
        {"t": 1.7e12, "lat": True, "lng": 1.0},
        {"t": 1.7e12, "lat": 1.0, "lng": 1.0, "speed": math.nan},
        [1, 2, 3],
        None,
    ):
        mixed = clean[:10] + [stray] + clean[10:20]
        fixes, index, malformed = decode_all(mixed, first_index=100)
        points, ref_index, ref_malformed = _reference_decode(mixed, 100)
        _same_columns(fixes, points)
        assert (index.tolist(), malformed) == (ref_index, ref_malformed)


def _reference_sequence(ms, lat, lng, before, rules):
    """Every fix against the last accepted one before it, one at a time."""
    k = math.pi / 180 * 6_371_008.8
    prev = (before.ms, before.lat, before.lng) if before else None
    out = []
    for t, a, b in zip(ms, lat, lng):
        reason = ""
        if prev is not None and prev[0] == t:
            reason = filters.DUPLICATE
        elif prev is not None:
            reach = rules.max_speed_mps * (t - prev[0]) / 1000.0 + 1.0
            dy = (a - prev[1]) * k
            dx = (b - prev[2]) * k * math.cos(math.radians((a + prev[1]) / 2))
            if dx * dx + dy * dy > reach * reach:
                reason = filters.JUMP
        if not reason:
            prev = (t, a, b)
        out.append(reason)
    return out


def test_duplicate_and_jump_walk_matches_the_plain_walk():
    rng = random.Random(5)
    rules = filters.Rules()
    for trial in range(200):
        n = rng.randint(1, 60)
        t, lat, lng = 1.7e12, 52.5, 13.4
        ms, lats, lngs = [], [], []
        for _ in range(n):
            t += rng.choice([0, 1000, 1000, 1000, 5000])  # some duplicates
            if rng.random() < 0.15:  # an outlier: far away, then back on the route
                ms.append(int(t))
                lats.append(lat + rng.uniform(0.05, 0.5))
                lngs.append(lng)
                continue
            lng += rng.uniform(0, 0.0003)
            ms.append(int(t))
            lats.append(lat)
            lngs.append(lng)
        before = Point(ms[0] - 1000, 52.5 + rng.choice([0.0, 0.3]), 13.4) if trial % 2 else None
        fixes = columns([Point(a, b, c) for a, b, c in zip(ms, lats, lngs)])
        got = filters.sequence(fixes, [], before, rules).tolist()
        assert got == _reference_sequence(ms, lats, lngs, before, rules), trial
