"""The one way a room's stored document (snapshot + log rows) becomes a Doc again, used by
persistence (load, compaction) and fan-out (resync, adopting a dead node's writes).

A stored row the engine fails on (written before updates were checked, or by a version with other
bugs) is skipped with a log line, never allowed to make the document unloadable: this is a
hostile-input defence (tests/test_hostile_input.py), so every reader of stored rows goes through
here. The doc is then rebuilt without the row, since a failed apply can leave part of it
integrated. The Doc is private: call these in a worker thread (asyncio.to_thread) for big logs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

import pycrdt
import structlog

from sync_server.sync.faults import LET_THROUGH

log = structlog.get_logger("sync_server.extensions.doc_rebuild")


# Log rows applied per transaction: one transaction per row spends half of a long log's replay on
# commits, one transaction for all of them is quadratic in yrs (10k rows: 1.8 s and 2.4 GB).
# Measured on 100k one-element pushes (bench/RESULTS.md, cold load): 1 row 0.28 s, 16 rows 0.15 s
# through Doc.apply_update, 0.105 s through the engine's own calls (`_native_doc`); with those, 8 and
# 32 rows cost as much as 16 (callgrind).
ROWS_PER_TRANSACTION = 16


def rebuild(snapshot: bytes | None, updates: list[bytes]) -> pycrdt.Doc:
    """A private Doc holding the snapshot and every log row the engine accepts."""
    skip: set[int] = set()
    while True:
        doc: pycrdt.Doc = pycrdt.Doc()
        if snapshot:
            doc.apply_update(snapshot)
        failed = _apply_rows(doc, updates, skip)
        if failed is None:
            return doc
        skip.add(failed)


def _native_doc(doc: pycrdt.Doc):
    """pycrdt's native Doc under `doc`, whose transactions the replay opens and commits itself:
    pycrdt's Transaction and Doc.apply_update run Python on every call (finding the transaction
    again, read-only and typed-model checks, origins, locks). Through the native calls a row costs
    10.1k instructions instead of 11.5k (callgrind, 20,000 rows). None should a pycrdt release
    rename the attributes: then the public calls are used."""
    native = getattr(doc, "_doc", None)
    if native is None or not hasattr(native, "create_transaction") or not hasattr(native, "apply_update"):
        return None
    return native


def _apply_rows(
    doc: pycrdt.Doc, updates: list[bytes], skip: set[int], begin: int = 0, *, quiet: bool = False
) -> int | None:
    """Apply every row from `begin` on not in `skip`, ROWS_PER_TRANSACTION at a time; the index of
    the first row the engine fails on (the doc is then spoilt: rebuild starts again without it),
    else None."""
    native = _native_doc(doc)
    for start in range(begin, len(updates), ROWS_PER_TRANSACTION):
        i = start
        end = min(start + ROWS_PER_TRANSACTION, len(updates))
        rows = range(start, end) if not skip else [j for j in range(start, end) if j not in skip]
        try:
            if native is None:
                with doc.transaction():
                    for i in rows:
                        doc.apply_update(updates[i])
            else:
                txn = native.create_transaction()
                try:
                    apply = partial(native.apply_update, txn)
                    for i in rows:
                        apply(updates[i])
                finally:  # committed whatever happened, as pycrdt's own transaction does
                    try:
                        txn.commit()
                    finally:
                        txn.drop()
        except LET_THROUGH:
            raise
        except BaseException as exc:
            if not quiet:
                log.error(
                    "stored_update_skipped", index=i, bytes=len(updates[i]), error=f"{type(exc).__name__}: {exc}"[:200]
                )
            return i
    return None


# Log rows a load replays on the event loop between two turns of it (~1-2 ms of yrs): a worker
# thread does not run beside the loop, pycrdt holds the GIL while it applies, and handing the GIL
# back and forth every 5 ms slowed both the replay and the loop's read of the next piece.
SLICE_ROWS = 1024
# Rows between two reports of a replay's progress (the doc so far, sent to the peers waiting for it).
PROGRESS_ROWS = 4096


class Replay:
    """`rebuild` fed piece by piece as the rows are read (storage.documents.load_pieces): each piece
    is replayed on the event loop in slices (`absorb`) while PostgreSQL reads the next. `doc()` is
    the same Doc as `rebuild(snapshot, every row)`; should a row fail, that rebuild (skipping it)
    runs at the end, in a worker thread. The Doc is private until `doc()` hands it over."""

    def __init__(self, snapshot: bytes | None) -> None:
        self.snapshot = snapshot
        self.rows: list[bytes] = []
        self._doc: pycrdt.Doc | None = None
        self._failed = False
        self._progress_at = 0  # rows replayed when progress is told next

    @property
    def failed(self) -> bool:
        """Whether a row failed: the doc replayed so far is spoilt (doc() rebuilds it)."""
        return self._failed

    def _start(self) -> pycrdt.Doc:
        doc: pycrdt.Doc = pycrdt.Doc()
        if self.snapshot:
            doc.apply_update(self.snapshot)
        return doc

    def feed(self, rows: list[bytes]) -> None:
        """Apply the next rows at once (one feed at a time)."""
        if self._doc is None:
            self._doc = self._start()
        begin = len(self.rows)
        self.rows += rows
        if not self._failed:
            self._failed = _apply_rows(self._doc, self.rows, set(), begin, quiet=True) is not None

    async def absorb(self, rows: list[bytes], progress: Callable[[pycrdt.Doc], None] | None = None) -> None:
        """Apply the next rows on the event loop, SLICE_ROWS at a time with a turn of the loop after
        each (the snapshot, of any size, is applied in a worker thread). `progress(doc)` is told the
        doc replayed so far after the first slice and then every PROGRESS_ROWS rows, while no row
        has failed (a doc `doc()` returns or holds all of)."""
        if self._doc is None:
            self._doc = await asyncio.to_thread(self._start) if self.snapshot else self._start()
        for start in range(0, len(rows), SLICE_ROWS):
            self.feed(rows[start : start + SLICE_ROWS])
            if progress is not None and not self._failed and len(self.rows) >= self._progress_at:
                self._progress_at = len(self.rows) + PROGRESS_ROWS
                progress(self._doc)
            await asyncio.sleep(0)

    async def doc(self) -> pycrdt.Doc:
        """The replayed Doc (rebuilt in a worker thread when a row failed)."""
        if self._failed or self._doc is None:
            return await asyncio.to_thread(rebuild, self.snapshot, self.rows)
        return self._doc


async def merge(snapshot: bytes | None, updates: list[bytes]) -> bytes:
    """The stored document as one update (persistence: load, compaction), off the event loop."""
    return await asyncio.to_thread(lambda: rebuild(snapshot, updates).get_update())


async def missing(snapshot: bytes | None, updates: list[bytes], state_vector: bytes) -> bytes:
    """What the stored document has beyond `state_vector` (fan-out resync), off the event loop."""
    return await asyncio.to_thread(lambda: rebuild(snapshot, updates).get_update(state_vector))


async def state_vector(snapshot: bytes | None, updates: list[bytes]) -> bytes:
    """The stored document's state vector (fan-out adopting a dead node's writes), off the event loop."""
    return await asyncio.to_thread(lambda: rebuild(snapshot, updates).get_state())
