"""The one doc-rebuild helper (sync_server/extensions/doc_rebuild.py) that persistence and fan-out
both use: a stored row the engine fails on is skipped, not fatal, for every reader."""

from __future__ import annotations

import pycrdt

from sync_server.extensions import doc_rebuild, fanout, persistence
from sync_server.sync import protocol

from .support import fuzz, sync_peers
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


def test_the_replay_goes_straight_to_the_engine_and_builds_the_same_doc():
    rows = sync_peers.array_pushes(doc_rebuild.ROWS_PER_TRANSACTION * 2 + 3)
    # the installed pycrdt still has the attributes the fast path uses (else: the slower public calls)
    assert doc_rebuild._native_doc(pycrdt.Doc()) is not None
    replayed = doc_rebuild.rebuild(None, rows[::-1])  # any order: later rows wait inside the engine
    one_by_one = pycrdt.Doc()
    for row in rows:
        one_by_one.apply_update(row)
    assert replayed.get_state() == one_by_one.get_state()
    assert replayed.get("log", type=pycrdt.Array).to_py() == [{"i": float(i)} for i in range(len(rows))]


async def test_a_replay_fed_in_pieces_is_the_rebuild_and_skips_a_bad_row_in_a_later_piece(monkeypatch):
    monkeypatch.setattr(doc_rebuild, "SLICE_ROWS", 4)
    monkeypatch.setattr(doc_rebuild, "PROGRESS_ROWS", 10)
    valid, bad = fuzz.load_case(PANIC_CASE)
    truncated = b"\x05\xff\xff\xff"  # the engine refuses it (ValueError): the replayed doc is spoilt
    rows = [valid, *sync_peers.array_pushes(40), protocol.decode(bad).update, truncated, _edit("after")]
    replay = doc_rebuild.Replay(None)
    told: list[int] = []  # entries replayed whenever progress was told
    for start in range(0, len(rows), 9):
        await replay.absorb(rows[start : start + 9], lambda d: told.append(len(d.get("log", type=pycrdt.Array))))
    assert replay.failed
    doc = await replay.doc()
    clean = doc_rebuild.rebuild(None, [r for i, r in enumerate(rows) if i != len(rows) - 2])
    assert doc.get_state() == clean.get_state()
    assert doc.get("m", type=pycrdt.Map).to_py() == {"after": 1}
    assert len(doc.get("log", type=pycrdt.Array)) == 40
    # told after the first slice (4 rows), then after every 10 rows or more, and never once the
    # truncated row spoilt the doc (it is in the last piece, with the row after it)
    assert told[0] == 3 and all(b - a >= 10 for a, b in zip(told, told[1:], strict=False)) and len(told) == 4
