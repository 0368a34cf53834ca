"""fast_unmasking (sync_server.node.patches): the same bytes as wsproto's own unmasking, across a frame's
chunks."""

from __future__ import annotations

import os
import random

from wsproto import frame_protocol

from sync_server.node import patches


def test_fast_unmasking_matches_wsproto_chunk_by_chunk():
    [patch] = [p for p in patches.PATCHES if p.name == "fast_unmasking"]
    assert patches.apply(patch)
    assert frame_protocol.XorMaskerSimple.unmasks_words
    original = frame_protocol.XorMaskerSimple.wsproto_process
    assert frame_protocol.XorMaskerSimple.process is not original
    rng = random.Random(7)
    for _ in range(300):
        key = os.urandom(4)
        theirs, ours = frame_protocol.XorMaskerSimple(key), frame_protocol.XorMaskerSimple(key)
        for _ in range(rng.randint(1, 6)):  # chunks of one frame: the key rotates between them
            data = os.urandom(rng.choice([0, 1, 2, 3, 5, 7, 64, 1001, 65_536 + rng.randint(0, 7)]))
            assert ours.process(data) == original(theirs, bytearray(data))
    assert patches.apply(patch)  # twice: still the one patch
    assert frame_protocol.XorMaskerSimple.unmasks_words
