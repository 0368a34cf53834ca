"""The one doc-rebuild helper (sync_server/extensions/doc_rebuild.py) that persistence and fan-out
both use: a stored row the engine fails on is skipped, not fatal, for every reader."""

from __future__ import annotations

import pycrdt

from sync_server.extensions import doc_rebuild, fanout, persistence
from sync_server.sync import protocol

from .support import fuzz
from .test_hostile_input import PANIC_CASE


def _edit(key: str) -> bytes:
    doc = pycrdt.Doc()
    doc.get("m", type=pycrdt.Map)[key] = 1
    return doc.get_update()


async def test_every_reader_skips_a_stored_row_the_engine_fails_on():
    valid, bad = fuzz.load_case(PANIC_CASE)
    bad_update = protocol.decode(bad).update
    later = _edit("later")
    rows = [valid, bad_update, later]

    doc = doc_rebuild.rebuild(None, rows)
    assert doc.get("m", type=pycrdt.Map).to_py() == {"later": 1}  # the row after the bad one is kept
    clean = doc_rebuild.rebuild(None, [valid, later])
    assert doc.get_state() == clean.get_state()

    merged = await doc_rebuild.merge(None, rows)
    assert await doc_rebuild.state_vector(None, rows) == clean.get_state()
    assert await doc_rebuild.missing(None, rows, clean.get_state()) == protocol.EMPTY_UPDATE
    fresh = pycrdt.Doc()
    fresh.apply_update(await doc_rebuild.missing(None, rows, fresh.get_state()))
    assert fresh.get_state() == clean.get_state()
    reloaded = pycrdt.Doc()
    reloaded.apply_update(merged)
    assert reloaded.get_state() == clean.get_state()

    # Both extensions use this helper, not a copy of their own.
    assert persistence.merge is doc_rebuild.merge
    assert fanout.doc_rebuild is doc_rebuild
