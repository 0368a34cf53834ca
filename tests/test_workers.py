"""WORKERS=N (sync_server/node/workers.py): N node processes on one port through SO_REUSEPORT,
cooperating through the Redis fan-out; each worker a node of its own with its own metrics port;
SIGTERM to the supervisor drains every worker without losing an update the workers took; N > 1
without Redis (or on a busy port) refuses to start with exit code 2."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pycrdt
import pytest

from sync_server.node import workers as workers_mod
from sync_server.sync import control, protocol

from .conftest import TEST_SECRET
from .support import sync_peers
from .support.server import ServerProcess, free_port
from .support.sync_peers import RawPeer

EXE = str(Path(sys.executable).parent / "webhost-sync")


@pytest.fixture
def workers_env(server_env, redis_url):
    base = free_port()
    while any(_busy(base + i) for i in range(1, 3)):
        base = free_port()
    return {
        **server_env,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"test-{secrets.token_hex(6)}:",
        "NODE_HEARTBEAT_SECONDS": "0.5",
        "WORKERS": "2",
        "NODE_ID": "box",
        "WORKER_PORT_BASE": str(base + 1),
    }


def _busy(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture
def workers(workers_env, tmp_path):
    proc = ServerProcess(workers_env, log_path=tmp_path / "workers.log")
    proc.start()  # the shared port answers once one worker is up; wait for each one's own port too
    base = int(workers_env["WORKER_PORT_BASE"])
    deadline = time.monotonic() + 60
    for port in (base, base + 1):
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, proc.log_text()[-3000:]
            time.sleep(0.1)
    yield proc
    proc.stop()


def _metrics(port: int) -> str:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200, response.text
    return response.text


def _gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} missing"
    return float(match.group(1))


def _doc_url(port: int, customer, doc: str = "fleet", query: str = "") -> str:
    return f"ws://127.0.0.1:{port}/sync/{customer.slug}/{doc}?token={sync_peers.token(TEST_SECRET, customer)}{query}"


async def _wait_for(predicate, peer: RawPeer, timeout: float = 15.0) -> None:
    async def read() -> None:
        while not predicate():
            await peer.recv(timeout)

    await asyncio.wait_for(read(), timeout)


def _push(peer: RawPeer, key: str, value) -> bytes:
    before = peer.doc.get_state()
    peer.doc.get("m", type=pycrdt.Map)[key] = value
    return protocol.update_frame(peer.doc.get_update(before))


async def test_two_workers_share_one_port_and_see_each_others_edits(workers, workers_env, database_url):
    customer = await sync_peers.create_customer(database_url)
    base = int(workers_env["WORKER_PORT_BASE"])
    # each worker answers its own metrics on its own port, under its own node id
    nodes = {_gauge(_metrics(base + i), "webhost_connections_open") for i in range(2)}
    assert nodes == {0.0}
    # a peer on each worker's own address: each sees the other's edit (through Redis)
    a = await RawPeer.connect(_doc_url(base, customer))
    b = await RawPeer.connect(_doc_url(base + 1, customer))
    for peer in (a, b):
        await peer.sync()
    assert [_gauge(_metrics(base + i), "webhost_connections_open") for i in range(2)] == [1.0, 1.0]
    await a.send(_push(a, "from_a", 1))
    await b.send(_push(b, "from_b", 2))
    m_a, m_b = a.doc.get("m", type=pycrdt.Map), b.doc.get("m", type=pycrdt.Map)
    await _wait_for(lambda: "from_b" in m_a, a)
    await _wait_for(lambda: "from_a" in m_b, b)
    # peers on the shared port land on both workers (the kernel spreads them) and converge
    shared = [await RawPeer.connect(_doc_url(workers.port, customer)) for _ in range(20)]
    for peer in shared:
        await peer.sync()
    spread = [_gauge(_metrics(base + i), "webhost_connections_open") for i in range(2)]
    assert sum(spread) == 22 and min(spread) > 1, spread
    for i, peer in enumerate(shared):
        await peer.send(_push(peer, f"s{i}", i))
    keys = {"from_a", "from_b"} | {f"s{i}" for i in range(len(shared))}
    for peer in (a, b, *shared):
        await _wait_for(lambda p=peer: set(p.doc.get("m", type=pycrdt.Map).keys()) == keys, peer)
    for peer in (a, b, *shared):
        await peer.close()
    log = workers.log_text()
    assert '{"node": "box-w0"' in log and '{"node": "box-w1"' in log  # a node id each (heartbeats)


async def test_sigterm_to_the_supervisor_drains_every_worker(workers, workers_env, database_url):
    """Writers on both workers stream updates with durable acknowledgements; SIGTERM lands mid-stream.
    Both workers exit 0 and every update a worker acknowledged, or relayed to the other worker's
    writer, is stored."""
    customer = await sync_peers.create_customer(database_url)
    base = int(workers_env["WORKER_PORT_BASE"])
    writers = [await RawPeer.connect(_doc_url(base + i, customer, query="&ack=1")) for i in range(2)]
    for w in writers:
        await w.sync()
    sent = [0, 0]
    acked = [0, 0]
    stop = asyncio.Event()

    async def stream(i: int) -> None:
        w = writers[i]
        try:
            while not stop.is_set():
                await w.send(_push(w, f"w{i}-{sent[i]}", sent[i]))
                sent[i] += 1
                await asyncio.sleep(0.001)
        except Exception:  # the socket closes under it (1001): that is the point
            return

    seen = [pycrdt.Doc(), pycrdt.Doc()]  # what each writer received: the other worker's edits

    async def read_acks(i: int) -> None:
        try:
            while True:
                frame = await writers[i].ws.recv()
                if control.is_control(frame):
                    kind, value = control.read_server_frame(frame)
                    if kind == control.DURABLE:
                        assert isinstance(value, int)
                        acked[i] = max(acked[i], value)
                    continue
                msg = protocol.decode(frame)
                if isinstance(msg, protocol.SyncUpdate):
                    seen[i].apply_update(msg.update)
        except Exception:
            return

    tasks = [asyncio.ensure_future(f(i)) for i in range(2) for f in (stream, read_acks)]
    while min(acked) < 50:
        await asyncio.sleep(0.01)
    code = await asyncio.to_thread(workers.stop, signal.SIGTERM, 60)
    stop.set()
    await asyncio.gather(*tasks)
    assert code == 0, workers.log_text()[-3000:]
    log = workers.log_text()
    assert log.count('"event": "runtime_stopped"') == 2, log[-3000:]
    stored = (await sync_peers.stored_doc(database_url, customer, "fleet")).get("m", type=pycrdt.Map)
    for i in range(2):
        # every acknowledged update is stored (DURABLE counts update messages: the sync step 2 each
        # writer answered while syncing, then its edits); those in flight at the close may be missing
        durable_edits = acked[i] - 1
        assert durable_edits >= 49
        assert all(f"w{i}-{n}" in stored for n in range(durable_edits)), (i, acked[i], sent[i])
        # and every edit one worker relayed to the other's writer (applied there, maybe not yet
        # committed when SIGTERM came: the drain wrote it)
        relayed = set(seen[1 - i].get("m", type=pycrdt.Map).keys())
        assert {k for k in relayed if k.startswith(f"w{i}-")} <= set(stored.keys())
        assert len(relayed) > 0


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EXE, "serve"], env={**os.environ, **env, "HOST": "127.0.0.1"}, capture_output=True, text=True, timeout=60
    )


def test_more_than_one_worker_without_redis_refuses_to_start(server_env):
    env = {k: v for k, v in server_env.items() if k != "REDIS_URL"}
    result = _serve({**env, "WORKERS": "2", "PORT": str(free_port()), "REDIS_URL": ""})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "webhost-sync: configuration error: WORKERS=2 needs REDIS_URL: each worker is a node of its own, and "
        "nodes share documents and presence only through the Redis fan-out (unset WORKERS to run one process)"
    )
    assert "Traceback" not in result.stderr


def test_workers_on_a_busy_port_exit_2_before_starting_any(workers_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve({**workers_env, "PORT": str(port)})
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "worker_started" not in result.stdout + result.stderr


@pytest.mark.slow
async def test_a_worker_that_dies_while_serving_is_started_again(workers, workers_env, database_url):
    base = int(workers_env["WORKER_PORT_BASE"])
    assert workers.proc is not None
    time.sleep(max(0.0, workers_mod.START_GRACE + 1 - _age(workers.proc.pid)))  # past its start-up
    [dead, _other] = sorted(workers.children())
    os.kill(dead, signal.SIGKILL)
    deadline = time.monotonic() + 120  # a node's start-up takes seconds, more on a busy machine
    while True:
        children = workers.children()
        if dead not in children and len(children) == 2:
            try:
                if all(httpx.get(f"http://127.0.0.1:{base + i}/healthz", timeout=1).status_code == 200 for i in (0, 1)):
                    break
            except httpx.HTTPError:
                pass
        assert time.monotonic() < deadline, workers.log_text()[-3000:]
        time.sleep(0.2)
    assert '"event": "worker_exited"' in workers.log_text()
    customer = await sync_peers.create_customer(database_url)
    a = await RawPeer.connect(_doc_url(base, customer))
    b = await RawPeer.connect(_doc_url(base + 1, customer))
    for peer in (a, b):
        await peer.sync()
    await a.send(_push(a, "again", 1))
    await _wait_for(lambda: "again" in b.doc.get("m", type=pycrdt.Map), b)
    await a.close()
    await b.close()


def _age(pid: int) -> float:
    """Seconds since process `pid` started."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")
