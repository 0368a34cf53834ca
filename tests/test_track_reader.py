"""The track reader's DocReader: whatever path it takes (an append read as JSON, anything else
through pycrdt's delta), its chunks equal decoding every inserted element in observed order."""

from __future__ import annotations

import random

import numpy as np
import pycrdt

from sync_server.domain.tracking.points import Chunk, decode_chunk, decode_json
from sync_server.domain.tracking.track_reader import DocReader, read_state


def _element(rng: random.Random, i: int):
    roll = rng.random()
    if roll < 0.03:
        return rng.choice(
            [
                True,
                "x",
                7,
                None,
                {"t": "2026-11-29T10:00:00Z", "lat": 1.0, "lng": 2.0},
                {"lat": 1.0},
                {"t": 1e400, "lat": 1.0, "lng": 2.0},
                {"t": 1.0, "lat": 1.0, "lng": 2.0, "speed": False},
            ]
        )
    fix = {"t": 1_700_000_000_000 + i * 1000, "lat": 52.5 + rng.uniform(-1, 1), "lng": rng.choice([13, 13.4])}
    for name in ("speed", "heading", "accuracy", "alt"):
        if rng.random() < 0.7:
            fix[name] = rng.choice([None, 3, 2.5])
    if rng.random() < 0.1:
        fix["extra"] = {"nested": [1, 2]}
    return fix


def _same(a: Chunk, b: Chunk) -> bool:
    return (
        (a.first, a.count, a.malformed) == (b.first, b.count, b.malformed)
        and np.array_equal(a.index, b.index)
        and all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a.fixes, b.fixes))
    )


def test_chunks_equal_decoding_every_inserted_element_in_observed_order(monkeypatch):
    from sync_server.domain.tracking import track_reader

    paths = {"json": 0, "declined": 0}

    def counted(*args):
        chunk = decode_json(*args)
        paths["json" if chunk is not None else "declined"] += 1
        return chunk

    monkeypatch.setattr(track_reader, "decode_json", counted)
    for seed in range(12):
        rng = random.Random(seed)
        clean = seed % 2 == 0  # half the runs without odd elements: the JSON path is taken
        source = pycrdt.Doc()
        points = source.get("points", type=pycrdt.Array)
        copy = pycrdt.Doc()
        copy_points = copy.get("points", type=pycrdt.Array)
        chunks: list[Chunk] = []
        reader = DocReader(copy_points, chunks.append)
        observed: list = []  # the reference: pycrdt's delta, in observed order
        subscription = copy_points.integrated.observe(  # kept: a dropped subscription stops observing
            lambda event, observed=observed: observed.extend(
                x for c in event.delta if "insert" in c for x in c["insert"]
            )
        )
        n = 0
        for _ in range(8):
            size = rng.choice([1, 3, 50, 400, 2_000])
            batch = [
                _element(rng, n + k) if not clean else {"t": float(n + k), "lat": 1.0, "lng": 2.0} for k in range(size)
            ]
            n += size
            with source.transaction():
                if rng.random() < 0.3 and len(points):  # an insert before the end (a second writer)
                    at = rng.randrange(len(points))
                    for k, element in enumerate(batch):
                        points.insert(at + k, element)
                else:
                    points.extend(batch)
            copy.apply_update(source.get_update(copy.get_state()))
            reader.mark_end()
        assert _same(Chunk.join(chunks), decode_chunk(observed, 0)), seed
        assert len(observed) == n
        subscription.drop()
    assert paths["json"] >= 6 and paths["declined"] >= 3  # both paths taken, and the JSON one declined odd elements


def test_a_copy_read_from_state_skips_what_is_materialized():
    rng = random.Random(3)
    source = pycrdt.Doc()
    points = source.get("points", type=pycrdt.Array)
    for j in range(5):
        with source.transaction():
            points.extend([_element(rng, j * 1000 + k) for k in range(1000)])
    everything = points.to_py()
    for done in (0, 1, 2_500, 5_000):
        chunks: list[Chunk] = []
        read_state(source.get_update(), done, chunks.append)
        if done == 5_000:
            assert chunks == []
            continue
        assert _same(Chunk.join(chunks), decode_chunk(everything[done:], done))
        assert max(c.count for c in chunks) <= 10_000
