"""The document store: an append-only update log per (customer, doc) plus one snapshot, and the
group-commit writer that appends to the log.

Loading a doc = its snapshot + every log row still present. Compaction merges rows into the snapshot
and deletes exactly the rows it merged (by seq), so a row committed late with a lower seq than the
snapshot's `upto_seq` is never skipped: Yjs updates are idempotent, replaying one twice is harmless.

The writer (`UpdateLog`) batches appends from every room of every customer: it waits at most
`window` seconds after the first pending row, then writes everything pending in one transaction per
database (switching the tenant with Database.set_tenant before each customer's rows; RLS is forced). A failed
write keeps its rows at the front and retries; nothing is dropped (a customer that no longer
exists is the one exception, logged).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import structlog

from .database import Database
from .registry import DatabaseRegistry

log = structlog.get_logger("storage.documents")

_INSERT = (
    "INSERT INTO doc_updates (customer_id, doc, update) "
    "SELECT $1::uuid, t.d, t.u FROM unnest($2::text[], $3::bytea[]) WITH ORDINALITY AS t(d, u, n) ORDER BY t.n"
)


@dataclass
class StoredDoc:
    snapshot: bytes | None
    updates: list[bytes]  # log rows after the snapshot, in seq order
    seqs: list[int] = field(default_factory=list)  # their seq, in the same order
    snapshot_count: int = 0  # the snapshot's update_count when read: changed by any compaction since
    size: int = 0  # bytes of the log rows (summed by PostgreSQL: 8 ms of Python at 100k rows)


# The log as two arrays: one row, not one Record per update (100k rows: 44 ms instead of 77). The
# rows are aggregated in the index's seq order (one ordered scan; `array_agg(... ORDER BY seq)` sorts
# again, twice: 66 ms). Order is for speed only: Yjs updates commute, one that arrives before what it
# builds on waits inside the engine until it comes. Rows come in pieces (keyset on seq) so that a
# reader replays one piece while PostgreSQL reads the next: FIRST_PIECE_ROWS first (25,000 rows took
# PostgreSQL 40-110 ms before the replay could start), each next one twice as many, up to
# LOAD_PIECE_ROWS.
LOAD_PIECE_ROWS = 25_000
FIRST_PIECE_ROWS = 2_000
_PIECE = (
    "SELECT array_agg(l.update) AS updates, array_agg(l.seq) AS seqs, max(l.seq) AS last, count(*) AS n, "
    "coalesce(sum(octet_length(l.update)), 0) AS size FROM "
    "(SELECT update, seq FROM doc_updates WHERE customer_id = $1 AND doc = $2 AND seq > $3 ORDER BY seq LIMIT $4) l"
)
_FIRST_PIECE = (
    "SELECT s.state, s.update_count, u.updates, u.seqs, u.last, u.n, u.size FROM (SELECT 1) one "
    "LEFT JOIN doc_snapshots s ON s.customer_id = $1 AND s.doc = $2 "
    f"CROSS JOIN ({_PIECE}) u"
)


async def load_pieces(
    db: Database, customer_id: str | uuid.UUID, doc: str, rows: int | None = None
) -> AsyncIterator[StoredDoc]:
    """The stored doc in pieces: the snapshot with the first log rows, then the next ones, ... (the
    snapshot is in the first piece only). With `rows`, every piece has `rows` rows; else the first
    has FIRST_PIECE_ROWS and each next one twice the last, up to LOAD_PIECE_ROWS (the replay starts
    after a short read, and the big pieces are read while it runs). The next piece is asked for
    before this one is handed on: PostgreSQL reads it while the caller replays this one. All are
    read in one REPEATABLE READ transaction: together exactly what one read at its start would
    return."""
    limit = rows or min(FIRST_PIECE_ROWS, LOAD_PIECE_ROWS)
    async with db.tenant(customer_id, snapshot=True) as conn:
        row = await conn.fetchrow(_FIRST_PIECE, customer_id, doc, 0, limit)
        piece = StoredDoc(row["state"], row["updates"] or [], row["seqs"] or [], row["update_count"] or 0, row["size"])
        following: asyncio.Future | None = None
        try:
            while True:
                if row["n"] == limit:
                    limit = rows or min(limit * 2, LOAD_PIECE_ROWS)
                    following = asyncio.ensure_future(conn.fetchrow(_PIECE, customer_id, doc, row["last"], limit))
                yield piece
                if following is None:
                    return
                row, following = await following, None
                piece = StoredDoc(None, row["updates"] or [], row["seqs"] or [], size=row["size"])
        finally:
            if following is not None:  # the caller stopped early: the connection goes back idle
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)


async def warm(db: Database) -> None:
    """Plan the load's statements once on each connection the pool holds (for a doc nobody has): a
    backend's first plan over the document tables reads the catalogs (20-25 ms here, against 2-3 ms
    for the same first piece afterwards), which would otherwise fall in the first cold load each
    connection serves after a start. The transactions overlap, so each one holds a connection of
    its own."""
    nobody = uuid.UUID(int=0)

    async def plan() -> None:
        async with db.tenant(nobody, snapshot=True) as conn:
            await conn.fetchrow(_FIRST_PIECE, nobody, "", 0, 1)
            await conn.fetchrow(_PIECE, nobody, "", 0, 1)

    pool = db.pool_use()
    await asyncio.gather(*(plan() for _ in range(pool[0] if pool else 1)))


async def load(db: Database, customer_id: str | uuid.UUID, doc: str) -> StoredDoc:
    """The whole stored doc (snapshot and every log row after it) at once."""
    stored: StoredDoc | None = None
    async for piece in load_pieces(db, customer_id, doc):
        if stored is None:
            stored = piece
        else:
            stored.updates += piece.updates
            stored.seqs += piece.seqs
            stored.size += piece.size
    assert stored is not None
    return stored


async def compact_loaded(
    db: Database, customer_id: str | uuid.UUID, doc: str, seqs: list[int], snapshot_count: int, state: bytes
) -> bool:
    """Compaction from a load: `state` (the snapshot and the log rows `seqs` merged, as `load` read
    them) becomes the snapshot and exactly those rows are deleted, unless a compaction ran since the
    load (the snapshot's update_count moved): then nothing is written (False) and the ordinary
    compaction follows."""
    if not seqs:
        return False
    async with db.tenant(customer_id) as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"compact:{customer_id}:{doc}")
        count = await conn.fetchval(
            "SELECT update_count FROM doc_snapshots WHERE customer_id = $1 AND doc = $2", customer_id, doc
        )
        if (count or 0) != snapshot_count:
            return False
        await _replace_snapshot(conn, customer_id, doc, state, seqs)
    return True


async def _replace_snapshot(
    conn: asyncpg.Connection, customer_id: str | uuid.UUID, doc: str, state: bytes, seqs: list[int]
) -> None:
    """Write the merged `state` as the snapshot and delete the log rows `seqs` it holds."""
    await conn.execute(
        "INSERT INTO doc_snapshots (customer_id, doc, state, upto_seq, update_count, updated_at) "
        "VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (customer_id, doc) DO UPDATE SET "
        "state = EXCLUDED.state, upto_seq = GREATEST(doc_snapshots.upto_seq, EXCLUDED.upto_seq), "
        "update_count = doc_snapshots.update_count + $5, updated_at = now()",
        customer_id,
        doc,
        state,
        max(seqs),
        len(seqs),
    )
    await conn.execute(
        "DELETE FROM doc_updates WHERE customer_id = $1 AND doc = $2 AND seq = ANY($3::bigint[])",
        customer_id,
        doc,
        seqs,
    )


async def count_updates(db: Database, customer_id: str | uuid.UUID, doc: str) -> int:
    async with db.tenant(customer_id) as conn:
        return await conn.fetchval(
            "SELECT count(*) FROM doc_updates WHERE customer_id = $1 AND doc = $2", customer_id, doc
        )


async def compact(
    db: Database,
    customer_id: str | uuid.UUID,
    doc: str,
    merge: Callable[[bytes | None, list[bytes]], Awaitable[bytes]],
    max_rows: int = 50_000,
) -> tuple[int, int]:
    """Merge up to `max_rows` log rows into the snapshot; returns how many rows (and bytes) were merged."""
    async with db.tenant(customer_id) as conn:
        # One compaction of a doc at a time, across nodes too.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"compact:{customer_id}:{doc}")
        snapshot = await conn.fetchrow(
            "SELECT state, update_count FROM doc_snapshots WHERE customer_id = $1 AND doc = $2", customer_id, doc
        )
        rows = await conn.fetch(
            "SELECT seq, update FROM doc_updates WHERE customer_id = $1 AND doc = $2 ORDER BY seq LIMIT $3",
            customer_id,
            doc,
            max_rows,
        )
        if not rows:
            return 0, 0
        state = await merge(snapshot["state"] if snapshot else None, [r["update"] for r in rows])
        seqs = [r["seq"] for r in rows]
        await _replace_snapshot(conn, customer_id, doc, state, seqs)
    return len(seqs), sum(len(r["update"]) for r in rows)


class UpdateLog:
    """Group-commit writer of doc_updates for every customer of this node."""

    def __init__(self, registry: DatabaseRegistry, *, window: float = 0.01, batch_rows: int = 20_000) -> None:
        self.registry = registry
        self.window = window
        self.batch_rows = batch_rows
        self._pending: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        self._appended: dict[str, int] = defaultdict(int)  # per customer, ever appended
        self._committed: dict[str, int] = defaultdict(int)  # per customer, ever committed (in order)
        self._inflight: set[str] = set()  # customers with rows in the write under way
        self._paused: dict[str, int] = defaultdict(int)
        self._waiters: list[tuple[str, int, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None
        self.rows_written = 0
        self.transactions = 0
        # Told (rows, seconds) after every committed transaction (the metrics extension).
        self.on_transaction: Callable[[int, float], None] | None = None
        self._commit_listeners: list[Callable[[str, int], None]] = []

    def on_commit(self, listener: Callable[[str, int], None]) -> None:
        """Call `listener(customer_id, committed)` after each commit of the customer's rows:
        `committed` counts the customer's appended updates that are durable (in append order)."""
        self._commit_listeners.append(listener)

    def position(self, customer_id: str) -> int:
        """How many updates of the customer were appended so far (the next one is this + 1)."""
        return self._appended.get(customer_id, 0)

    def _committed_rows(self, cid: str, rows: int) -> None:
        self._committed[cid] += rows
        self.rows_written += rows
        for listener in self._commit_listeners:
            try:
                listener(cid, self._committed[cid])
            except Exception:
                log.exception("update_log_commit_listener_failed", customer_id=cid)

    # -- producers ----------------------------------------------------------------------------------

    def append(self, customer_id: str, doc: str, update: bytes) -> None:
        """Queue one update (never blocks, never drops)."""
        self._pending[customer_id].append((doc, update))
        self._appended[customer_id] += 1
        if not self._wake.is_set():
            self._wake.set()

    def pending(self, customer_id: str | None = None) -> int:
        if customer_id is not None:
            return self._appended[customer_id] - self._committed[customer_id]
        return sum(self._appended[c] - self._committed[c] for c in list(self._appended))

    async def flush(self, customer_id: str | None = None) -> None:
        """Return once everything appended before the call (for one customer, or all customers that
        are not paused) is committed."""
        customers = (
            [customer_id] if customer_id is not None else [c for c in list(self._appended) if not self._paused.get(c)]
        )
        loop = asyncio.get_running_loop()
        futures = []
        for cid in customers:
            target = self._appended[cid]
            if self._committed[cid] < target:
                fut = loop.create_future()
                self._waiters.append((cid, target, fut))
                futures.append(fut)
        if futures:
            self._wake.set()
            await asyncio.gather(*futures)

    # -- pausing (tenant moves) ---------------------------------------------------------------------

    def is_paused(self, customer_id: str) -> bool:
        return bool(self._paused.get(customer_id))

    @asynccontextmanager
    async def paused(self, customer_id: str) -> AsyncIterator[None]:
        await self.flush(customer_id)
        self._paused[customer_id] += 1
        try:
            while customer_id in self._inflight:  # a write that took rows just before the pause
                await asyncio.sleep(0.005)
            yield
        finally:
            self._paused[customer_id] -= 1
            if self._paused[customer_id] <= 0:
                del self._paused[customer_id]
            self._wake.set()
        if not self.is_paused(customer_id):
            await self.flush(customer_id)  # held rows go to the database resolved now

    # -- the writer task ----------------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        self._task = asyncio.ensure_future(self._run())
        self._task.set_name("update-log-writer")
        return self._task

    async def stop(self, timeout: float = 30.0) -> None:
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except TimeoutError:
            log.error("update_log_flush_timeout", pending=self.pending())
        held = {c: self.pending(c) for c in self._paused if self.pending(c)}
        if held:
            log.error("update_log_held_at_stop", held=held)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = self._take()
            if not batch:
                self._resolve_waiters()
                continue
            if self.window and sum(len(rows) for rows in batch.values()) < self.batch_rows // 4:
                # Group commit: give concurrent writers a moment to join this transaction.
                self._put_back(batch)
                await asyncio.sleep(self.window)
                batch = self._take()
            ok = await self._write(batch)
            self._resolve_waiters()
            if ok:
                backoff = 0.05
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            if any(self._pending[c] for c in self._pending if not self._paused.get(c)):
                self._wake.set()

    def _take(self) -> dict[str, list[tuple[str, bytes]]]:
        batch: dict[str, list[tuple[str, bytes]]] = {}
        budget = self.batch_rows
        for cid in list(self._pending):
            rows = self._pending[cid]
            if not rows or self._paused.get(cid):
                continue
            if len(rows) <= budget:
                batch[cid] = rows
                self._pending[cid] = []
            else:
                batch[cid] = rows[:budget]
                self._pending[cid] = rows[budget:]
            budget -= len(batch[cid])
            if budget <= 0:
                break
        for cid in list(self._pending):
            if not self._pending[cid]:
                del self._pending[cid]
        return batch

    def _put_back(self, batch: dict[str, list[tuple[str, bytes]]]) -> None:
        for cid, rows in batch.items():
            rest = self._pending.get(cid)
            self._pending[cid] = rows + rest if rest else rows

    async def _write(self, batch: dict[str, list[tuple[str, bytes]]]) -> bool:
        self._inflight = set(batch)
        try:
            by_db: dict[int, tuple[Database, list[str]]] = {}
            for cid in batch:
                db = await self.registry.for_customer(cid)
                by_db.setdefault(id(db), (db, []))[1].append(cid)
            all_ok = True
            for db, cids in by_db.values():
                started = time.perf_counter()
                try:
                    async with db.connection() as conn:
                        async with conn.transaction():
                            for cid in cids:
                                await _insert(db, conn, cid, batch[cid])
                except Exception as exc:
                    all_ok = False
                    if len(cids) > 1:
                        # One customer's bad row must not hold the others back: retry one by one.
                        for cid in cids:
                            await self._write_one(db, cid, batch[cid])
                    else:
                        await self._failed(cids[0], batch[cids[0]], exc)
                    continue
                self.transactions += 1
                rows = 0
                for cid in cids:
                    self._committed_rows(cid, len(batch[cid]))
                    rows += len(batch[cid])
                if self.on_transaction is not None:
                    self.on_transaction(rows, time.perf_counter() - started)
                log.debug(
                    "update_log_committed",
                    database=db.name,
                    customers=len(cids),
                    rows=rows,
                    ms=round((time.perf_counter() - started) * 1000, 2),
                )
            return all_ok
        finally:
            self._inflight = set()

    async def _write_one(self, db: Database, cid: str, rows: list[tuple[str, bytes]]) -> None:
        started = time.perf_counter()
        try:
            async with db.connection() as conn:
                async with conn.transaction():
                    await _insert(db, conn, cid, rows)
        except Exception as exc:
            await self._failed(cid, rows, exc)
            return
        self.transactions += 1
        self._committed_rows(cid, len(rows))
        if self.on_transaction is not None:
            self.on_transaction(len(rows), time.perf_counter() - started)

    async def _failed(self, cid: str, rows: list[tuple[str, bytes]], exc: Exception) -> None:
        if isinstance(exc, asyncpg.ForeignKeyViolationError):
            # The customer was deleted: its documents went with it (ON DELETE CASCADE).
            log.error("update_log_customer_gone", customer_id=cid, rows=len(rows))
            self._committed[cid] += len(rows)
            return
        log.error("update_log_write_failed", customer_id=cid, rows=len(rows), error=repr(exc))
        self._put_back({cid: rows})

    def _resolve_waiters(self) -> None:
        still = []
        for cid, target, fut in self._waiters:
            if fut.done():
                continue
            if self._committed[cid] >= target:
                fut.set_result(None)
            else:
                still.append((cid, target, fut))
        self._waiters = still


async def _insert(db: Database, conn: asyncpg.Connection, customer_id: str, rows: list[tuple[str, bytes]]) -> None:
    await db.set_tenant(conn, customer_id)
    await conn.execute(_INSERT, customer_id, [d for d, _ in rows], [u for _, u in rows])
