"""The room layer in-process against real PostgreSQL: single-flight load, hooks, pausing a
customer's writes while it moves database, closing a customer's peers, eviction only when durable."""

from __future__ import annotations

import asyncio

import asyncpg
import pycrdt
import pytest

from storage import AppRole, Database, DatabaseRegistry, documents, migrator
from storage.documents import UpdateLog
from sync_server.extensions import doc_rebuild
from sync_server.extensions.persistence import Persistence
from sync_server.sync import protocol
from sync_server.sync.connection import Connection
from sync_server.sync.hooks import PERSISTENCE, REMOTE, RoomHooks
from sync_server.sync.rooms import RoomRegistry

from .conftest import TEST_SECRET
from .support import databases, sync_peers


def _update(key: str, value) -> bytes:
    doc = pycrdt.Doc()
    doc["m"] = m = pycrdt.Map()
    m[key] = value
    return doc.get_update()


@pytest.fixture
async def core(database_url):
    registry = await DatabaseRegistry(
        Database(database_url, AppRole.from_secret(TEST_SECRET), min_size=1, max_size=5)
    ).open()
    log = UpdateLog(registry, window=0.005)
    log.start()
    rooms = RoomRegistry(evict_after=0.05)
    persistence = Persistence(registry, log, compact_after=10, compact_interval=0)
    rooms.hooks.add(persistence, priority=PERSISTENCE)
    rooms.add_pauser(persistence.paused)
    yield rooms, log, registry
    await log.stop()
    await registry.close()


class Recorder(RoomHooks):
    def __init__(self):
        self.loads, self.changes, self.evicted = [], [], []

    async def load(self, room):
        self.loads.append(room.doc)

    async def change(self, room, update, origin):
        self.changes.append((room.doc, update, origin, dict(room.ydoc.get("m", type=pycrdt.Map))))

    async def evict(self, room):
        self.evicted.append(room.doc)


async def test_many_simultaneous_gets_load_once_and_hooks_see_applied_changes(core, database_url):
    rooms, log, _ = core
    customer = await sync_peers.create_customer(database_url)
    rec = Recorder()
    rooms.hooks.add(rec)
    got = await asyncio.gather(*(rooms.get(customer.id, "tracks/v1/2025-01-31") for _ in range(20)))
    assert len({id(r) for r in got}) == 1 and rec.loads == ["tracks/v1/2025-01-31"]
    room = got[0]
    local = _update("a", 1)
    await room.apply(local)
    await room.apply_remote(_update("b", 2))
    assert [(c[0], c[3]) for c in rec.changes] == [
        ("tracks/v1/2025-01-31", {"a": 1.0}),
        ("tracks/v1/2025-01-31", {"a": 1.0, "b": 2.0}),
    ]
    assert rec.changes[1][2] is REMOTE
    await log.flush(customer.id)
    count, _, rows = await sync_peers.stored_updates(database_url, customer, "tracks/v1/2025-01-31")
    assert rows == [local]  # a remote update is persisted by the node that received it


async def test_eviction_waits_until_durable_and_reload_sees_everything(core, database_url):
    rooms, log, _ = core
    customer = await sync_peers.create_customer(database_url)
    rec = Recorder()
    rooms.hooks.add(rec)
    room = await rooms.get(customer.id, "fleet")
    for i in range(50):
        await room.apply(_update(f"k{i}", i))
    while rooms.peek(customer.id, "fleet") is not None:
        await asyncio.sleep(0.01)
    assert rec.evicted == ["fleet"]
    assert log.pending(customer.id) == 0
    again = await rooms.get(customer.id, "fleet")
    assert again is not room
    assert again.ydoc.get("m", type=pycrdt.Map).to_py() == {f"k{i}": float(i) for i in range(50)}


async def test_paused_holds_writes_and_resumes_into_the_database_resolved_then(core, database_url, pg_admin_url):
    rooms, log, registry = core
    customer = await sync_peers.create_customer(database_url)
    room = await rooms.get(customer.id, "fleet")
    await room.apply(_update("before", 1))
    dedicated = await databases.create_database(pg_admin_url)
    try:
        await migrator.migrate(dedicated)
        async with rooms.paused(customer.id):
            # Everything before the pause is in the old database already.
            assert (await sync_peers.stored_updates(database_url, customer, "fleet"))[0] == 1
            during = _update("during", 2)
            await room.apply(during)
            await asyncio.sleep(0.05)  # several group-commit windows
            assert (await sync_peers.stored_updates(database_url, customer, "fleet"))[0] == 1
            assert log.pending(customer.id) == 1  # held, not dropped
            # The move: copy the customer row, then route it to the dedicated database.
            conn = await asyncpg.connect(dedicated)
            try:
                await conn.execute(
                    "INSERT INTO customers (id, slug, name) VALUES ($1, $2, 'x')", customer.id, customer.slug
                )
            finally:
                await conn.close()
            await registry.route(customer.id, dedicated)
        assert log.pending(customer.id) == 0
        count, _, rows = await sync_peers.stored_updates(dedicated, customer, "fleet")
        assert rows == [during]
        assert (await sync_peers.stored_updates(database_url, customer, "fleet"))[0] == 1
    finally:
        await registry.route(customer.id, None)
        await databases.drop_database(pg_admin_url, dedicated)


async def test_close_customer_closes_only_that_customers_peers(core, database_url):
    rooms, _, _ = core
    acme = await sync_peers.create_customer(database_url, slug="acme")
    globex = await sync_peers.create_customer(database_url, slug="globex")
    sent = []

    async def send(frame):
        sent.append(frame)

    peers = {}
    for c in (acme, globex):
        room = await rooms.get(c.id, "fleet")
        conn = Connection(send, customer_id=c.id, doc="fleet", can_write=True, queue_limit=10)
        rooms.join(room, conn)
        peers[c.slug] = conn
    assert await rooms.close_customer(acme.id) == 1
    assert peers["acme"].close_code == 4403 and peers["acme"].closed.is_set()
    assert peers["globex"].close_code is None


async def _peer_that_never_reads(rooms, customer, **bounds):
    """A joined peer of the customer's fleet room whose every write blocks (it does not read)."""
    stuck = asyncio.Event()

    async def never(frame):
        await stuck.wait()

    room = await rooms.get(customer.id, "fleet")
    conn = Connection(never, customer_id=customer.id, doc="fleet", can_write=True, **bounds)
    conn.start()
    rooms.join(room, conn)
    return room, conn


async def test_a_peer_that_does_not_read_is_closed_1013_not_buffered(core, database_url):
    rooms, _, _ = core
    customer = await sync_peers.create_customer(database_url)
    room, slow = await _peer_that_never_reads(rooms, customer, queue_limit=16)
    for i in range(40):
        await room.apply(_update(f"k{i}", i))
    assert slow.close_code == 1013 and slow.queued == 0
    await slow.stop()


async def test_idle_connections_are_closed_1001(core, database_url):
    rooms, _, _ = core
    customer = await sync_peers.create_customer(database_url)

    async def send(frame):
        pass

    room = await rooms.get(customer.id, "fleet")
    quiet = Connection(send, customer_id=customer.id, doc="fleet", can_write=True, queue_limit=10)
    lively = Connection(send, customer_id=customer.id, doc="fleet", can_write=True, queue_limit=10)
    rooms.join(room, quiet)
    rooms.join(room, lively)
    quiet.last_seen -= 120
    await asyncio.sleep(0.01)  # the senders took the join's frames
    queued = lively.queued
    assert rooms.close_idle(60) == 1
    assert quiet.close_code == 1001 and lively.close_code is None and lively.queued == queued
    lively.last_seen -= 40  # quiet for more than half the timeout: asked for a sign of life
    assert rooms.close_idle(60) == 0
    assert lively.close_code is None and lively.queued == queued + 1


async def test_the_send_queue_is_bounded_in_bytes_too(core, database_url):
    rooms, _, _ = core
    customer = await sync_peers.create_customer(database_url)
    # Frames far under the frame bound, but 10 KB each: closed 1013 once 64 KiB wait.
    room, slow = await _peer_that_never_reads(rooms, customer, queue_limit=16384, queue_bytes=64 * 1024)
    for i in range(40):
        await room.apply(_update(f"k{i}", "v" * 10_000))
        if slow.close_code is not None:
            break
    assert slow.close_code == 1013 and 5 <= i <= 8
    assert slow.queued == 0 and slow.queued_bytes == 0
    await slow.stop()
    # A whole document larger than the bound still reaches a peer whose queue is empty.
    _, big = await _peer_that_never_reads(rooms, customer, queue_limit=16384, queue_bytes=64 * 1024)
    await asyncio.sleep(0.01)  # its sender took the join's sync step 1 (and blocks writing it)
    big.enqueue(b"\x00\x01" + b"x" * 200_000)
    assert big.close_code is None and big.queued_bytes > 64 * 1024
    big.enqueue(b"\x00\x01" + b"x" * 100)  # but nothing more while that waits
    assert big.close_code == 1013
    await big.stop()


async def test_awareness_client_ids_a_peer_makes_up_are_bounded(core, database_url):
    from sync_server.sync import protocol
    from sync_server.sync.rooms import (
        MAX_AWARENESS_CLIENTS_PER_PEER,
        MAX_AWARENESS_REMOVED,
    )

    rooms, _, _ = core
    customer = await sync_peers.create_customer(database_url)
    room, peer = await _peer_that_never_reads(rooms, customer, queue_limit=10**6, queue_bytes=2**40)
    first = [(c, 1, '{"u":1}') for c in range(MAX_AWARENESS_CLIENTS_PER_PEER)]
    await room.receive(peer, protocol.awareness_frame(first))  # as many as allowed: fine
    with pytest.raises(protocol.Malformed):
        await room.receive(peer, protocol.awareness_frame([(10**6, 1, '{"u":1}')]))
    await room.receive(peer, protocol.awareness_frame([(c, 2, None) for c, _, _ in first]))
    # Introduce and remove made-up ids over and over: the removed clients' clocks stay bounded.
    for start in range(10**6, 10**6 + 50_000, 200):
        batch = range(start, start + 200)
        await room.receive(peer, protocol.awareness_frame([(c, 1, '{"u":1}') for c in batch]))
        await room.receive(peer, protocol.awareness_frame([(c, 2, None) for c in batch]))
    assert len(room._awareness) <= MAX_AWARENESS_CLIENTS_PER_PEER + MAX_AWARENESS_REMOVED
    assert peer.close_code is None and not peer.awareness_ids
    await peer.stop()


def _deletes(client: int, *ranges: tuple[int, int]) -> bytes:
    """A delete-only update (no structs) deleting `ranges` (clock, length) of `client`, as encoded by hand."""
    out = protocol.var_uint(0) + protocol.var_uint(1) + protocol.var_uint(client) + protocol.var_uint(len(ranges))
    for clock, length in ranges:
        out += protocol.var_uint(clock) + protocol.var_uint(length)
    return out


async def test_a_re_encoded_echo_of_deletions_is_neither_stored_nor_relayed(core, database_url):
    """Same state vector and same delete set: nothing new, whatever its bytes (issue 15: pycrdt's
    Provider echoes what it applies; an echo need not be byte-identical to what the room relayed)."""
    rooms, log, _ = core
    customer = await sync_peers.create_customer(database_url)
    rec = Recorder()
    rooms.hooks.add(rec)
    room = await rooms.get(customer.id, "notes")
    author = pycrdt.Doc()
    text = author.get("t", type=pycrdt.Text)
    text += "hello world"
    await room.apply(author.get_update())
    client = author.client_id
    await room.apply(_deletes(client, (0, 6)))  # "world" is left
    assert str(room.ydoc.get("t", type=pycrdt.Text)) == "world" and len(rec.changes) == 2
    version = room.version
    for echo in (_deletes(client, (0, 3), (3, 3)), _deletes(client, (2, 4)), _deletes(client, (0, 6), (1, 2))):
        await room.apply(echo)
    assert room.version == version and len(rec.changes) == 2  # none stored, none relayed
    await room.apply(_deletes(client, (4, 3)))  # overlaps: one more character is new
    assert str(room.ydoc.get("t", type=pycrdt.Text)) == "orld" and len(rec.changes) == 3
    await log.flush(customer.id)
    assert (await sync_peers.stored_updates(database_url, customer, "notes"))[0] == 3


_log_rows = sync_peers.log_rows


async def test_a_long_log_loads_whole_and_becomes_the_snapshot_on_load(core, database_url):
    rooms, log, registry = core
    customer = await sync_peers.create_customer(database_url)
    # more rows than one replay transaction holds, in an order the engine must wait on (the last
    # row first: it builds on all the others)
    updates = sync_peers.array_pushes(doc_rebuild.ROWS_PER_TRANSACTION * 3 + 5)
    await _log_rows(database_url, customer.id, "fleet", updates[-1:] + updates[:-1])
    room = await rooms.get(customer.id, "fleet")
    expected = [{"i": float(i)} for i in range(len(updates))]
    assert room.ydoc.get("log", type=pycrdt.Array).to_py() == expected
    # compaction on load: the replayed doc is the snapshot, exactly the loaded rows are gone
    while (await sync_peers.stored_updates(database_url, customer, "fleet"))[0]:
        await asyncio.sleep(0.02)
    stored = await sync_peers.stored_doc(database_url, customer, "fleet")
    assert stored.get("log", type=pycrdt.Array).to_py() == expected
    # the room keeps serving edits after it (its doc is the one the worker thread built)
    await room.apply(_update("after", 1))
    await log.flush(customer.id)
    assert (await sync_peers.stored_doc(database_url, customer, "fleet")).get("m", type=pycrdt.Map).to_py() == {
        "after": 1.0
    }


async def test_compaction_from_a_load_steps_aside_when_another_compaction_ran_since(core, database_url):
    _rooms, _log, registry = core
    customer = await sync_peers.create_customer(database_url)
    updates = sync_peers.array_pushes(30)
    await _log_rows(database_url, customer.id, "fleet", updates[:20])
    db = await registry.for_customer(customer.id)
    loaded = await documents.load(db, customer.id, "fleet")
    assert len(loaded.updates) == len(loaded.seqs) == 20 and loaded.snapshot_count == 0
    await _log_rows(database_url, customer.id, "fleet", updates[20:])
    assert await documents.compact(db, customer.id, "fleet", doc_rebuild.merge) == (30, sum(map(len, updates)))
    stale = doc_rebuild.rebuild(loaded.snapshot, loaded.updates).get_update()
    assert not await documents.compact_loaded(db, customer.id, "fleet", loaded.seqs, 0, stale)
    stored = await sync_peers.stored_doc(database_url, customer, "fleet")
    assert len(stored.get("log", type=pycrdt.Array)) == 30  # the newer snapshot was kept
    fresh = await documents.load(db, customer.id, "fleet")
    assert fresh.updates == [] and fresh.snapshot_count == 30


async def test_a_log_read_in_pieces_is_one_consistent_read(core, database_url, monkeypatch):
    rooms, _log, registry = core
    customer = await sync_peers.create_customer(database_url)
    updates = sync_peers.array_pushes(60)
    await _log_rows(database_url, customer.id, "fleet", updates[:50])
    db = await registry.for_customer(customer.id)
    pieces = []
    async for piece in documents.load_pieces(db, customer.id, "fleet", rows=8):
        pieces.append(piece)
        if len(pieces) == 1:  # committed while the read is under way: not part of it
            await _log_rows(database_url, customer.id, "fleet", updates[50:])
    assert [len(p.updates) for p in pieces] == [8, 8, 8, 8, 8, 8, 2]
    assert [u for p in pieces for u in p.updates] == updates[:50]
    assert len({s for p in pieces for s in p.seqs}) == 50
    # the room's load reads and replays piece by piece too, and compacts what it read
    monkeypatch.setattr(documents, "LOAD_PIECE_ROWS", 7)
    room = await rooms.get(customer.id, "fleet")
    assert room.ydoc.get("log", type=pycrdt.Array).to_py() == [{"i": float(i)} for i in range(60)]
    while (await sync_peers.stored_updates(database_url, customer, "fleet"))[0]:
        await asyncio.sleep(0.02)
    stored = await sync_peers.stored_doc(database_url, customer, "fleet")
    assert len(stored.get("log", type=pycrdt.Array)) == 60


async def test_a_joiner_s_sync_step_1_is_the_doc_s_state_when_it_joins(core, database_url):
    """Sync step 1 is encoded once per doc version and shared by the joiners of that version: one
    who joins after an update gets the state vector with that update."""
    rooms, _, _ = core
    customer = await sync_peers.create_customer(database_url)
    room = await rooms.get(customer.id, "fleet")
    sent: list[list[bytes]] = []

    def joiner() -> Connection:
        frames: list[bytes] = []
        sent.append(frames)

        async def send(frame):
            frames.append(frame)

        conn = Connection(send, customer_id=customer.id, doc="fleet", can_write=True, queue_limit=10)
        conn.start()
        rooms.join(room, conn)
        return conn

    first, same = joiner(), joiner()
    await room.apply(_update("a", 1))
    after = joiner()
    await asyncio.sleep(0.01)  # the senders took the join's frames
    assert sent[0][0] == sent[1][0] == protocol.step1_frame(pycrdt.Doc().get_state())
    assert sent[2][0] == protocol.step1_frame(room.ydoc.get_state()) != sent[0][0]
    for conn in (first, same, after):
        await conn.stop()
