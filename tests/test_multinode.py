"""Several `webhost-sync serve` nodes sharing one PostgreSQL database and one real Redis, with real JS
clients (client-examples/js) spread over the nodes: edits and presence cross nodes, a Redis outage
and a killed node lose nothing, and the shared limits hold across nodes."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time

import asyncpg
import httpx
import pycrdt
import pytest

from .conftest import TEST_SECRET
from .support import sync_peers
from .support.balancer import Balancer
from .support.private_redis import PrivateRedis
from .support.server import ServerProcess
from .support.sync_peers import RawPeer, js, js_start
from .test_sync_js import wait_stored


@pytest.fixture
async def customer(database_url):
    return await sync_peers.create_customer(database_url)


@pytest.fixture
def node_env(server_env, redis_url):
    """What every node of one test shares: the database, Redis, and a key prefix of its own."""
    return {
        **server_env,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"test-{secrets.token_hex(6)}:",
        "NODE_HEARTBEAT_SECONDS": "0.5",
        "ROOM_EVICT_SECONDS": "5",
    }


class Cluster:
    def __init__(self, env: dict, tmp_path) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.nodes: list[ServerProcess] = []

    def start(self, count: int, **extra: str) -> list[ServerProcess]:
        for _ in range(count):
            n = len(self.nodes)
            self.nodes.append(
                ServerProcess(
                    {**self.env, "NODE_ID": f"node-{n}", **extra}, log_path=self.tmp_path / f"node-{n}.log"
                ).start()
            )
        return self.nodes

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def cluster(node_env, tmp_path):
    c = Cluster(node_env, tmp_path)
    yield c
    c.stop()


def plan(base_ws: str, customer, doc="fleet", steps=(), **extra) -> str:
    return json.dumps(
        {
            "server": f"{base_ws}/sync/{customer.slug}",
            "doc": doc,
            "token": sync_peers.token(TEST_SECRET, customer),
            "read": {"maps": ["m"], "arrays": ["a"], "texts": ["t"]},
            "steps": list(steps),
            **extra,
        }
    )


async def run_js(*args, **kwargs) -> dict:
    return await asyncio.to_thread(js, *args, **kwargs)


async def read_mark(proc, mark: str) -> dict:
    while True:
        line = await asyncio.to_thread(proc.stdout.readline)
        if not line:
            raise AssertionError(f"client ended before {mark!r}: {proc.stderr.read()[-3000:]}")
        out = json.loads(line)
        if out.get("mark") == mark:
            return out


async def finish(proc, timeout: float = 120) -> dict:
    out, err = await asyncio.to_thread(sync_peers.rest_of, proc, timeout)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def stored_array(ydoc: pycrdt.Doc, name: str = "a") -> list:
    return list(ydoc.get(name, type=pycrdt.Array))


async def test_edits_and_presence_converge_over_three_nodes(cluster, customer):
    nodes = cluster.start(3)
    peers = []
    for i, node in enumerate(nodes):
        others = [j for j in range(3) if j != i]
        peers.append(
            js_start(
                "peer.mjs",
                plan(
                    node.ws_url,
                    customer,
                    steps=[
                        {"op": "synced"},
                        {"op": "awareness", "state": {"user": f"u{i}", "node": i}},
                        {"op": "set", "map": "m", "key": f"k{i}", "value": i},
                        {"op": "push", "array": "a", "values": [f"from-{i}"]},
                        {"op": "insert", "text": "t", "index": 0, "value": f"<{i}>"},
                        *[{"op": "waitKey", "map": "m", "key": f"k{j}"} for j in others],
                        {"op": "waitArrayLength", "array": "a", "length": 3},
                        {"op": "waitPresence", "count": 2},
                        {"op": "print", "mark": "present"},
                        {"op": "set", "map": "m", "key": f"done{i}", "value": True},
                        *[{"op": "waitKey", "map": "m", "key": f"done{j}"} for j in others],
                    ],
                ),
            )
        )
    present = [await read_mark(p, "present") for p in peers]
    ends = [await finish(p) for p in peers]
    assert ends[0]["maps"] == ends[1]["maps"] == ends[2]["maps"]
    assert ends[0]["maps"]["m"] == {"k0": 0, "k1": 1, "k2": 2, "done0": True, "done1": True, "done2": True}
    assert ends[0]["arrays"] == ends[1]["arrays"] == ends[2]["arrays"]
    assert sorted(ends[0]["arrays"]["a"]) == ["from-0", "from-1", "from-2"]
    assert ends[0]["texts"] == ends[1]["texts"] == ends[2]["texts"]
    for i, seen in enumerate(present):
        # Presence of the clients of the two other nodes crossed over.
        assert sorted(p["state"]["node"] for p in seen["presence"] if p["state"]) == [j for j in range(3) if j != i]
    # A late joiner on any node sees the same document.
    late = await run_js("peer.mjs", plan(nodes[2].ws_url, customer, steps=[{"op": "synced"}]))
    assert (late["maps"], late["arrays"], late["texts"]) == (ends[0]["maps"], ends[0]["arrays"], ends[0]["texts"])


async def presence_removed_on_b(cluster, customer, vanish) -> ServerProcess:
    """A client on node A shows presence to a watcher on node B; `vanish(holder, a)` makes it go
    without a goodbye; the watcher must see the server's removal (not its own 30 s timeout)."""
    a, b = cluster.start(2)
    holder = js_start(
        "peer.mjs",
        plan(
            a.ws_url,
            customer,
            maxBackoffTime=60000,
            steps=[
                {"op": "synced"},
                {"op": "awareness", "state": {"user": "holder"}},
                {"op": "flush"},
                {"op": "print", "mark": "present"},
                {"op": "sleep", "ms": 600000},
            ],
        ),
    )
    try:
        await read_mark(holder, "present")
        watcher = js_start(
            "peer.mjs",
            plan(
                b.ws_url,
                customer,
                steps=[
                    {"op": "synced"},
                    {"op": "waitPresence", "count": 1},
                    {"op": "print", "mark": "seen"},
                    {"op": "waitPresenceAtMost", "count": 0},
                ],
            ),
        )
        seen = await read_mark(watcher, "seen")
        assert [p["state"] for p in seen["presence"]] == [{"user": "holder"}]
        vanish(holder, a)
        end = await finish(watcher)
        removal = [e for e in end["events"] if "presenceRemoved" in e]
        assert removal and removal[0]["origin"] == "remote"
    finally:
        holder.kill()
    return b


async def test_presence_of_a_vanished_client_is_removed_on_the_other_node(cluster, customer):
    def vanish(holder, _node):
        holder.send_signal(signal.SIGKILL)  # the TCP connection just drops; node A stays

    await presence_removed_on_b(cluster, customer, vanish)


async def test_presence_of_a_dead_nodes_clients_is_removed_by_heartbeat_timeout(cluster, customer):
    def vanish(holder, node):
        holder.send_signal(signal.SIGSTOP)  # the client says nothing more (no reconnect elsewhere)
        node.kill()  # kill -9: no goodbye from node A either

    b = await presence_removed_on_b(cluster, customer, vanish)
    assert '"nodes_presumed_dead"' in b.log_text()


async def test_redis_killed_mid_stream_and_restarted_loses_no_update(cluster, customer, database_url, tmp_path):
    redis = PrivateRedis(tmp_path / "redis").start()
    try:
        a, b = cluster.start(2, REDIS_URL=redis.url)

        def writer(node, name):
            return js_start(
                "peer.mjs",
                plan(
                    node.ws_url,
                    customer,
                    steps=[
                        {"op": "synced"},
                        {"op": "pushMany", "array": "a", "count": 100, "prefix": f"{name}1-"},
                        {"op": "flush"},
                        {"op": "print", "mark": "one"},
                        {"op": "waitKey", "map": "m", "key": "phase2"},
                        {"op": "pushMany", "array": "a", "count": 100, "prefix": f"{name}2-"},
                        {"op": "flush"},
                        {"op": "print", "mark": "two"},
                        {"op": "waitKey", "map": "m", "key": "phase3"},
                        {"op": "pushMany", "array": "a", "count": 100, "prefix": f"{name}3-"},
                        {"op": "waitArrayLength", "array": "a", "length": 600},
                    ],
                ),
            )

        wa, wb = writer(a, "a"), writer(b, "b")
        await asyncio.gather(read_mark(wa, "one"), read_mark(wb, "one"))
        redis.kill()
        deadline = time.monotonic() + 30
        while True:  # each node notices and reports degraded, still serving
            ready = [httpx.get(n.base_url + "/readyz", timeout=5) for n in (a, b)]
            if all(r.status_code == 200 and r.json()["status"] == "degraded" for r in ready):
                break
            assert time.monotonic() < deadline, [r.text for r in ready]
            await asyncio.sleep(0.2)
        # Phase 2 while Redis is down: each node's own clients are served (the signal reaches each
        # writer through its own node).
        await asyncio.gather(
            *(
                run_js(
                    "peer.mjs",
                    plan(
                        n.ws_url,
                        customer,
                        steps=[
                            {"op": "synced"},
                            {"op": "set", "map": "m", "key": "phase2", "value": True},
                            {"op": "flush"},
                            {"op": "sleep", "ms": 200},
                        ],
                    ),
                )
                for n in (a, b)
            )
        )
        await asyncio.gather(read_mark(wa, "two"), read_mark(wb, "two"))
        redis.start()  # the same port, empty: whatever the streams held is gone
        await run_js(
            "peer.mjs",
            plan(
                a.ws_url,
                customer,
                steps=[
                    {"op": "synced"},
                    {"op": "set", "map": "m", "key": "phase3", "value": True},
                    {"op": "flush"},
                    {"op": "sleep", "ms": 200},
                ],
            ),
        )
        end_a, end_b = await asyncio.gather(finish(wa), finish(wb))
        assert end_a["arrayLengths"]["a"] == end_b["arrayLengths"]["a"] == 600
        assert end_a["arrays"] == end_b["arrays"]
        expected = sorted(f"{w}{p}-{i}" for w in "ab" for p in (1, 2, 3) for i in range(100))
        assert sorted(end_a["arrays"]["a"]) == expected
        stored = await wait_stored(database_url, customer, "fleet", lambda d: len(stored_array(d)) == 600)
        assert sorted(stored_array(stored)) == expected
        for node in (a, b):
            assert httpx.get(node.base_url + "/readyz", timeout=5).json()["status"] == "ok"
            assert '"fanout_connected"' in node.log_text()
    finally:
        redis.kill()


async def test_killed_node_clients_reconnect_to_another_node_and_converge(cluster, customer, database_url):
    a, b = cluster.start(2)
    balancer = await Balancer([a.port, b.port]).start()
    try:
        one = js_start(
            "peer.mjs",
            plan(
                balancer.ws_url,
                customer,
                steps=[
                    {"op": "synced"},
                    {"op": "awareness", "state": {"user": "one"}},
                    {"op": "pushMany", "array": "a", "count": 50, "prefix": "one-"},
                    {"op": "flush"},
                    {"op": "print", "mark": "ready"},
                    {"op": "waitReconnect"},
                    {"op": "pushMany", "array": "a", "count": 50, "prefix": "one-after-"},
                    {"op": "waitArrayLength", "array": "a", "length": 200},
                ],
            ),
        )
        await read_mark(one, "ready")
        two = js_start(
            "peer.mjs",
            plan(
                balancer.ws_url,
                customer,
                steps=[
                    {"op": "synced"},
                    {"op": "pushMany", "array": "a", "count": 50, "prefix": "two-"},
                    {"op": "waitArrayLength", "array": "a", "length": 100},
                    {"op": "print", "mark": "ready"},
                    {"op": "waitArrayLength", "array": "a", "length": 150},
                    {"op": "pushMany", "array": "a", "count": 50, "prefix": "two-after-"},
                    {"op": "waitArrayLength", "array": "a", "length": 200},
                ],
            ),
        )
        await read_mark(two, "ready")
        assert balancer.assigned[:2] == [a.port, b.port]  # one on node A, two on node B
        a.kill()  # kill -9
        end_one, end_two = await asyncio.gather(finish(one), finish(two))
        assert balancer.assigned[2:] and set(balancer.assigned[2:]) == {b.port}  # one came back through B
        assert end_one["arrays"] == end_two["arrays"]
        expected = sorted(
            [f"one-{i}" for i in range(50)]
            + [f"one-after-{i}" for i in range(50)]
            + [f"two-{i}" for i in range(50)]
            + [f"two-after-{i}" for i in range(50)]
        )
        assert sorted(end_one["arrays"]["a"]) == expected
        stored = await wait_stored(database_url, customer, "fleet", lambda d: len(stored_array(d)) == 200)
        assert sorted(stored_array(stored)) == expected
    finally:
        await balancer.stop()


async def set_connection_limit(database_url: str, limit: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE plans SET connection_limit = $1", limit)
    finally:
        await conn.close()


async def test_connection_limit_holds_across_nodes(cluster, customer, database_url):
    await set_connection_limit(database_url, 2)  # every plan: the customer has none, so the default one
    a, b = cluster.start(2)
    holders = [
        js_start(
            "peer.mjs",
            plan(
                node.ws_url,
                customer,
                steps=[{"op": "synced"}, {"op": "print", "mark": "in"}, {"op": "sleep", "ms": 600000}],
            ),
        )
        for node in (a, b)
    ]
    try:
        for holder in holders:
            await read_mark(holder, "in")
        tok = sync_peers.token(TEST_SECRET, customer)
        for node in (a, b, a):
            probe = await RawPeer.connect(f"{node.ws_url}/sync/{customer.slug}/fleet?token={tok}")
            code, reason = await probe.closed()
            assert code == 1013 and "connection limit" in reason
        # A slot freed on node A is usable from node B.
        holders[0].kill()
        deadline = time.monotonic() + 30
        while True:
            probe = await RawPeer.connect(f"{b.ws_url}/sync/{customer.slug}/fleet?token={tok}")
            try:
                await probe.sync(timeout=5)
                break
            except Exception:
                assert time.monotonic() < deadline, "the freed slot never came back"
                await asyncio.sleep(0.2)
        await probe.close()
    finally:
        for holder in holders:
            holder.kill()


async def test_rest_rate_limit_is_shared_by_the_nodes(cluster):
    a, b = cluster.start(2, REST_RATE_LIMIT_PER_MINUTE="5")
    for attempt in range(3):
        # counted before it is even checked; a new credential per attempt, so requests of an
        # attempt that straddled a minute boundary do not count in the next attempt's window
        headers = {"Authorization": f"Bearer not-a-real-key-{attempt}"}
        window = int(time.time() // 60)
        answers = [
            httpx.get((a, b)[i % 2].base_url + "/api/v1/vehicles", headers=headers, timeout=30) for i in range(6)
        ]
        if int(time.time() // 60) != window:
            continue  # the minute turned mid-way: the counts restarted; try again
        assert [r.status_code for r in answers[:5]] == [401] * 5
        limited = answers[5]
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        # Another credential has its own budget.
        other = httpx.get(b.base_url + "/api/v1/vehicles", headers={"Authorization": "Bearer other"}, timeout=30)
        assert other.status_code == 401
        return
    pytest.fail("could not stay inside one rate-limit window")
