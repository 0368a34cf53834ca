"""A tenant migration pauses the customer's writes on every node (sync_server/domain/provisioning/cluster_pause.py):
two real nodes on one PostgreSQL and one Redis, real JS y-websocket clients of the moving customer on
both nodes and a REST writer on the other node, writing throughout a move to single_tenant; a node
that does not confirm the pause fails the migration before the switch; a pause that is never ended
runs out after its lease."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import asyncpg
import httpx
import pycrdt
import pytest

from storage import deployments as store
from sync_server.sync import protocol

from .conftest import TEST_SECRET
from .support import databases, sync_peers, tenants
from .test_multinode import Cluster, node_env  # noqa: F401  (node_env: a fixture used by `cluster` below)
from .test_provisioning_api import _api_key, _js_writer, _wait


@pytest.fixture
def cluster(node_env, tmp_path, pg_admin_url, database_url):  # noqa: F811
    c = Cluster(
        {**node_env, "PROVISION_LOCAL_ADMIN_URL": pg_admin_url, "MIGRATION_CLEANUP_GRACE_SECONDS": "3600"}, tmp_path
    )
    yield c
    c.stop()
    for name in asyncio.run(tenants.dedicated_database_names(database_url)):
        asyncio.run(databases.drop_database(pg_admin_url, databases.with_database(pg_admin_url, name)))


class RestWriter:
    """Creates one vehicle after another on one node until stopped; remembers every 201."""

    def __init__(self, node, key: str) -> None:
        self.node, self.key = node, key
        self.created: list[str] = []
        self.slowest = 0.0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(
            base_url=self.node.base_url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60
        ) as client:
            while not self.stop.is_set():
                name = f"rest-{len(self.created)}"
                started = time.monotonic()
                r = await client.post("/api/v1/vehicles", json={"name": name, "vehicle_identifier": name.upper()})
                assert r.status_code == 201, r.text
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.created.append(name)
                await asyncio.sleep(0.05)


async def _migrate(node, op: str, cid, *statuses: str) -> dict:
    async with httpx.AsyncClient(base_url=node.base_url, headers={"Authorization": f"Bearer {op}"}, timeout=60) as c:
        r = await c.post(f"/api/v1/customers/{cid}/migrations", json={"to": "single_tenant"})
        assert r.status_code == 202, r.text
        return await _wait(c, f"/api/v1/customers/{cid}/migrations/{r.json()['id']}", *statuses)


async def _fetch(url: str, query: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def _dedicated_url(database_url: str, cid) -> str | None:
    rows = await _fetch(
        database_url,
        "SELECT database_url FROM deployments WHERE customer_id = $1 AND status = "
        "'active' AND mode = 'single_tenant' AND database_url IS NOT NULL",
        cid,
    )
    return store.open_database_url(cid, rows[0]["database_url"]) if rows else None


async def _start_writers(nodes, customer, stop_file) -> list:
    """One real JS client per node on the fleet doc, each writing a point every 20 ms into map
    `positions` until `stop_file` exists; returns them once every one is synced."""
    tok = sync_peers.token(TEST_SECRET, customer)
    origin_ms = int(time.time() * 1000)
    clients = [
        _js_writer(node, tok, "fleet", f"fleet#{i}", stop_file, {"map": "positions"}, i, origin_ms)
        for i, node in enumerate(nodes)
    ]
    for proc in clients:
        assert (await asyncio.to_thread(sync_peers.next_line, proc))["mark"] == "ready"
    return clients


async def _finish_writers(clients, stop_file) -> list[dict]:
    stop_file.touch()
    outputs = await asyncio.gather(*(asyncio.to_thread(sync_peers.rest_of, proc, 150) for proc in clients))
    ends = []
    for proc, (out, err) in zip(clients, outputs):
        assert proc.returncode == 0, err[-4000:]
        ends.append(json.loads([line for line in out.splitlines() if line.strip()][-1]))
    a, b = ends
    written = a["maps"]["done"]
    assert written == b["maps"]["done"] and len(written) == 2 and all(n > 20 for n in written.values()), written
    assert a["maps"]["positions"] == b["maps"]["positions"] and len(a["maps"]["positions"]) == sum(written.values())
    return ends


async def _stored_positions(url: str, customer, expected: int) -> dict:
    for _ in range(100):  # the last points are committed within a group-commit window or so
        stored = await sync_peers.stored_doc(url, customer, "fleet")
        kept = stored.get("positions", type=pycrdt.Map).to_py()
        if len(kept) >= expected:
            return kept
        await asyncio.sleep(0.1)
    return kept


def _kill_all(clients) -> None:
    for proc in clients:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_writes_on_every_node_during_a_move_all_reach_the_new_database(cluster, database_url, tmp_path):
    a, b = cluster.start(2)
    cid = await tenants.seed_customer(database_url, slug="fleetco", gps_rows=20_000, plan="business")
    customer = sync_peers.Customer(str(cid), "fleetco")
    op = await tenants.operator_token(database_url)
    rest = RestWriter(b, await _api_key(database_url, cid, ["fleet:read", "fleet:write"]))
    stop = tmp_path / "stop-writing"
    clients = await _start_writers((a, b), customer, stop)
    try:
        rest_task = asyncio.ensure_future(rest.run())
        await asyncio.sleep(0.5)
        mig = await _migrate(a, op, cid, "switched", "cleaned")  # the migration runs on node A
        assert mig["status"] == "switched", mig.get("error")
        await asyncio.sleep(0.5)  # everybody keeps writing, now on the dedicated database
        ends = await _finish_writers(clients, stop)
        rest.stop.set()
        await rest_task
    finally:
        stop.touch()
        rest.stop.set()
        _kill_all(clients)
    dedicated = await _dedicated_url(database_url, cid)
    assert dedicated is not None
    # every point both clients wrote (through node A and through node B) is in the new database
    expected = ends[0]["maps"]["positions"]
    assert await _stored_positions(dedicated, customer, len(expected)) == expected
    # and nothing was stored in the source after its final catch-up: the source's document is
    # contained in the new one (the source copy is kept for the clean-up grace period)
    source = await sync_peers.stored_doc(database_url, customer, "fleet")
    target = await sync_peers.stored_doc(dedicated, customer, "fleet")
    assert source.get_update(target.get_state()) == protocol.EMPTY_UPDATE, "writes stored in the source only"
    # every vehicle node B created over REST is in the new database
    assert len(rest.created) > 20
    made = {r["name"] for r in await _fetch(dedicated, "SELECT name FROM vehicles WHERE customer_id = $1", cid)}
    assert set(rest.created) <= made, sorted(set(rest.created) - made)
    # node B held the customer's writes for node A's migration, then ended the hold
    assert '"cluster_pause_holding"' in b.log_text() and '"cluster_pause_ended"' in b.log_text()
    print(
        f"\ncluster pause: pause_ms {mig['pause_ms']:.0f}; JS points {sum(ends[0]['maps']['done'].values())}; "
        f"REST vehicles on node B {len(rest.created)}, slowest {rest.slowest * 1000:.0f} ms"
    )


async def test_a_node_that_does_not_confirm_the_pause_fails_the_migration(cluster, database_url, tmp_path):
    # beats every 10 s (alive for 30 s): node B still counts as live while it is stopped
    a, b = cluster.start(2, NODE_HEARTBEAT_SECONDS="10", CLUSTER_PAUSE_ACK_SECONDS="2")
    cid = await tenants.seed_customer(database_url, slug="fleetco", gps_rows=1000, plan="business")
    customer = sync_peers.Customer(str(cid), "fleetco")
    op = await tenants.operator_token(database_url)
    key = await _api_key(database_url, cid, ["fleet:read", "fleet:write"])
    stop = tmp_path / "stop-writing"
    clients = await _start_writers((a, b), customer, stop)
    try:
        b.proc.send_signal(signal.SIGSTOP)  # node B answers nothing (its Redis subscription included)
        try:
            mig = await _migrate(a, op, cid, "switched", "cleaned")
        finally:
            b.proc.send_signal(signal.SIGCONT)
        assert mig["status"] == "failed", mig
        assert "node-1" in mig["error"] and "did not confirm" in mig["error"], mig["error"]
        assert await _dedicated_url(database_url, cid) is None  # still served by the shared database
        await asyncio.sleep(1.0)  # both nodes keep writing, to the source
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            for node in (a, b):
                started = time.monotonic()
                r = await c.post(
                    node.base_url + "/api/v1/vehicles",
                    json={"name": f"after-{node.port}", "vehicle_identifier": f"AFTER-{node.port}"},
                )
                assert r.status_code == 201, r.text
                # not held: node B got the pause after its SIGCONT together with its end (the
                # lease would hold it for 30 s)
                assert time.monotonic() - started < 10
        ends = await _finish_writers(clients, stop)
    finally:
        stop.touch()
        _kill_all(clients)
    expected = ends[0]["maps"]["positions"]
    assert await _stored_positions(database_url, customer, len(expected)) == expected
    made = {r["name"] for r in await _fetch(database_url, "SELECT name FROM vehicles WHERE customer_id = $1", cid)}
    assert {f"after-{a.port}", f"after-{b.port}"} <= made
    assert '"cluster_pause_' in b.log_text() and '"cluster_pause_lease_expired"' not in b.log_text()


async def test_a_pause_that_is_never_ended_runs_out_after_its_lease(cluster, database_url, node_env, redis_url):  # noqa: F811
    import redis.asyncio as aioredis

    a, b = cluster.start(2)
    cid = await tenants.seed_customer(database_url, slug="fleetco", gps_rows=10, plan="business")
    key = await _api_key(database_url, cid, ["fleet:read", "fleet:write"])
    prefix = node_env["REDIS_PREFIX"]
    client = aioredis.from_url(redis_url)
    try:
        # a migrating node that asks for the pause and then dies: no `end` ever comes
        await client.publish(
            f"{prefix}pause",
            json.dumps({"op": "pause", "id": "ghost", "customer": str(cid), "from": "node-gone", "lease_ms": 2000}),
        )
        acks = set()
        deadline = time.monotonic() + 10
        while len(acks) < 2 and time.monotonic() < deadline:
            got = await client.blpop([f"{prefix}pause:ghost:acks"], timeout=1)
            if got:
                ack = json.loads(got[1])
                assert ack["ok"], ack
                acks.add(ack["node"])
        assert acks == {"node-0", "node-1"}
        started = time.monotonic()
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            r = await c.post(b.base_url + "/api/v1/vehicles", json={"name": "held", "vehicle_identifier": "HELD"})
        waited = time.monotonic() - started
        assert r.status_code == 201, r.text
        assert 0.5 < waited < 10, waited  # held until the lease ran out, then written
        assert '"cluster_pause_lease_expired"' in b.log_text()
    finally:
        await client.aclose()
    made = {r["name"] for r in await _fetch(database_url, "SELECT name FROM vehicles WHERE customer_id = $1", cid)}
    assert "held" in made


async def test_a_lease_too_short_for_the_switch_fails_the_migration(cluster, database_url):
    a, b = cluster.start(2, CLUSTER_PAUSE_ACK_SECONDS="0.5", CLUSTER_PAUSE_LEASE_SECONDS="1")
    cid = await tenants.seed_customer(database_url, slug="fleetco", gps_rows=100, plan="business")
    mig = await _migrate(a, await tenants.operator_token(database_url), cid, "switched", "cleaned")
    assert mig["status"] == "failed" and "lease" in mig["error"], mig
    assert await _dedicated_url(database_url, cid) is None
    # node B's hold was ended (by the failed migration's `end`, or at the latest by its lease)
    key = await _api_key(database_url, cid, ["fleet:read", "fleet:write"])
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        r = await c.post(b.base_url + "/api/v1/vehicles", json={"name": "after", "vehicle_identifier": "AFTER"})
    assert r.status_code == 201, r.text
