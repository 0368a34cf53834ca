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

import pycrdt
import structlog

from sync_server.sync.faults import LET_THROUGH

log = structlog.get_logger("sync_server.extensions.doc_rebuild")


def rebuild(snapshot: bytes | None, updates: list[bytes]) -> pycrdt.Doc:
    """A private Doc holding the snapshot and every log row the engine accepts."""
    skip: set[int] = set()
    while True:
        doc: pycrdt.Doc = pycrdt.Doc()
        if snapshot:
            doc.apply_update(snapshot)
        for i, update in enumerate(updates):
            if i in skip:
                continue
            try:
                doc.apply_update(update)
            except LET_THROUGH:
                raise
            except BaseException as exc:
                log.error(
                    "stored_update_skipped", index=i, bytes=len(update), error=f"{type(exc).__name__}: {exc}"[:200]
                )
                skip.add(i)
                break
        else:
            return doc


async def merge(snapshot: bytes | None, updates: list[bytes]) -> bytes:
    """The stored document as one update (persistence: load, compaction), off the event loop."""
    return await asyncio.to_thread(lambda: rebuild(snapshot, updates).get_update())


async def missing(snapshot: bytes | None, updates: list[bytes], state_vector: bytes) -> bytes:
    """What the stored document has beyond `state_vector` (fan-out resync), off the event loop."""
    return await asyncio.to_thread(lambda: rebuild(snapshot, updates).get_update(state_vector))


async def state_vector(snapshot: bytes | None, updates: list[bytes]) -> bytes:
    """The stored document's state vector (fan-out adopting a dead node's writes), off the event loop."""
    return await asyncio.to_thread(lambda: rebuild(snapshot, updates).get_state())
