"""Hostile input from one customer never hurts another: a seeded, time-bounded fuzz run against a real
server, real PostgreSQL, over the websocket and the HTTP document API, while a client of another
customer writes and reads every 100 ms.

The attacker holds nothing but its own valid token and API key. Checks: the node stays up and
answers /healthz throughout; its RSS stays bounded; the other customer's round trips keep flowing
(p50/p99 printed: `pytest -s`); no document the fuzzer did not write changes; every document the
fuzzer wrote reloads from PostgreSQL to exactly the state the node serves; the HTTP API only answers
200 or a JSON 4xx; no connection is closed with 1011 (an unhandled server error).

FUZZ_SECONDS (default 25) bounds the run, FUZZ_SEED picks the seed (default: a new one, printed).
Inputs that made the CRDT engine fail are added to tests/fuzz_corpus/ and replayed first on every run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pycrdt
import pytest
import websockets

from sync_server.sync import protocol

from .conftest import TEST_SECRET
from .support import fuzz, sync_peers
from .support.server import ServerProcess

FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "25"))
ROOMS = 6

_RELOAD = r"""
import json, sys, pycrdt
from sync_server.sync import protocol
doc = pycrdt.Doc()
for line in sys.stdin.read().split():
    doc.apply_update(bytes.fromhex(line))
sv, pos = {}, 0
raw = doc.get_state()
n, pos = protocol.read_var_uint(raw, 0)
for _ in range(n):
    c, pos = protocol.read_var_uint(raw, pos)
    k, pos = protocol.read_var_uint(raw, pos)
    sv[str(c)] = k
from sync_server.domain.documents import doc_content
roots = json.loads(json.dumps(doc_content.to_json(doc.get_update()), default=repr))
# Clients yrs holds pending structs for show as clock 0, their roots as empty: not content.
sv = {c: k for c, k in sv.items() if k}
roots = {k: v for k, v in roots.items() if v not in ([], {}, "")}
print(json.dumps({"sv": sv, "roots": roots}, sort_keys=True))
"""


def reloaded(updates: list[bytes]) -> dict:
    """State vector and content of a doc rebuilt from `updates`, in a child process (an input that
    crashed the engine there fails this check instead of the test run)."""
    proc = subprocess.run(
        [sys.executable, "-c", _RELOAD],
        input="\n".join(u.hex() for u in updates),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"reloading the stored rows failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


async def stored_rows(database_url: str, customer, doc: str) -> list[bytes]:
    _, snap, rows = await sync_peers.stored_updates(database_url, customer, doc)
    return ([snap] if snap else []) + rows


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture
def node(database_url, tmp_path):
    proc = ServerProcess(
        {
            "DATABASE_URL": database_url,
            "DATA_DIR": str(tmp_path / "data"),
            "SECRET_KEY": TEST_SECRET,
            "LOG_LEVEL": "warning",
            "TRACKING_READERS": "0",
        },
        log_path=tmp_path / "server.log",
    ).start()
    yield proc
    proc.stop()


class Victim:
    """Another customer's client: writes a key every 100 ms and waits for the server's echo."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.doc = pycrdt.Doc()
        self.map = self.doc.get("m", type=pycrdt.Map)
        self.round_trips: list[float] = []
        self.written: dict[str, int] = {}
        self.errors: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        async with websockets.connect(self.url, max_size=None) as ws:
            await ws.send(protocol.step1_frame(self.doc.get_state()))
            i = 0
            while not stop.is_set():
                before = self.doc.get_state()
                self.map[f"k{i}"] = i
                update = self.doc.get_update(before)
                sent = time.perf_counter()
                await ws.send(protocol.update_frame(update))
                try:
                    while True:
                        frame = await asyncio.wait_for(ws.recv(), 10)
                        msg = protocol.decode(frame)
                        if isinstance(msg, protocol.SyncUpdate) and not msg.step2 and msg.update == update:
                            break
                except TimeoutError:
                    self.errors.append(f"no echo of write {i} within 10 s")
                    return
                self.round_trips.append(time.perf_counter() - sent)
                self.written[f"k{i}"] = i
                i += 1
                await asyncio.sleep(0.1)


class Attacker:
    def __init__(self, node: ServerProcess, customer, token: str, api_key: str, seed: int) -> None:
        self.node = node
        self.customer = customer
        self.token = token
        self.api_key = api_key
        self.rng = random.Random(seed)
        self.maker = fuzz.FrameMaker(self.rng)
        self.closes: dict[int, int] = {}
        self.frames_sent = 0
        self.http: dict[int, int] = {}
        self.http_bad: list[str] = []
        self.engine_failures: list[list[bytes]] = []
        self.docs: set[str] = set()

    def url(self, doc: str) -> str:
        return f"{self.node.ws_url}/sync/{self.customer.slug}/{doc}?token={self.token}"

    async def session(self, doc: str, frames: list[bytes]) -> None:
        """One connection: send `frames`, then a sync step 1 and wait for its answer or the close."""
        self.docs.add(doc)
        try:
            async with websockets.connect(self.url(doc), max_size=None, open_timeout=10) as ws:
                for frame in frames:
                    await ws.send(frame)
                    self.frames_sent += 1
                await ws.send(protocol.step1_frame(b"\x00"))
                while True:
                    reply = await asyncio.wait_for(ws.recv(), 10)
                    if isinstance(reply, bytes) and reply[:2] == bytes((protocol.SYNC, protocol.STEP2)):
                        return
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            self.closes[code] = self.closes.get(code, 0) + 1
            if exc.rcvd and exc.rcvd.reason == "update rejected":
                self.engine_failures.append(frames)

    async def post(self, update: bytes) -> None:
        async with httpx.AsyncClient(base_url=self.node.base_url, timeout=10) as client:
            r = await client.post(
                "/api/v1/docs/fz-http/updates",
                content=update,
                headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/octet-stream"},
            )
        self.docs.add("fz-http")
        self.http[r.status_code] = self.http.get(r.status_code, 0) + 1
        if r.status_code != 200:
            try:
                ok = r.status_code < 500 and "code" in r.json()["error"]
            except ValueError:
                ok = False
            if not ok:
                self.http_bad.append(f"{r.status_code} {r.text[:200]!r} for {update.hex()[:200]}")

    async def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.rng.random() < 0.15:
                src = self.rng.choice(self.maker.sources)
                update = src.edit()
                await self.post(update)
                await self.post(fuzz.mutate(self.rng, update))
            else:
                await self.session(f"fz/{self.rng.randrange(ROOMS)}", self.maker.frames())


async def test_fuzzing_one_customer_never_hurts_the_node_or_another(node, database_url, tmp_path):
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    print(f"\nfuzz seed {seed} ({FUZZ_SECONDS:.0f} s)")
    attacker_customer = await sync_peers.create_customer(database_url, slug=f"evil{uuid.uuid4().hex[:8]}")
    victim_customer = await sync_peers.create_customer(database_url, slug=f"good{uuid.uuid4().hex[:8]}")
    api_key = await sync_peers.create_api_key(database_url, attacker_customer, ["sync:read", "sync:write"])
    victim_token = sync_peers.token(TEST_SECRET, victim_customer)

    # A document of the other customer that nobody touches during the run.
    bystander = sync_peers.RawPeer(
        await websockets.connect(
            f"{node.ws_url}/sync/{victim_customer.slug}/archive?token={victim_token}", max_size=None
        )
    )
    bystander.doc.get("m", type=pycrdt.Map)["kept"] = "as it was"
    await bystander.send(protocol.update_frame(bystander.doc.get_update()))
    await bystander.sync()
    await bystander.close()
    await asyncio.sleep(0.1)
    archive_before = reloaded(await stored_rows(database_url, victim_customer, "archive"))
    assert archive_before["roots"] == {"m": {"kept": "as it was"}}

    attacker = Attacker(node, attacker_customer, sync_peers.token(TEST_SECRET, attacker_customer), api_key, seed)

    # 1. The corpus: every input that once broke something, each into a fresh room.
    corpus = fuzz.load_corpus()
    for frames in corpus:
        await attacker.session(f"corpus/{uuid.uuid4().hex[:8]}", frames)
    print(f"corpus: {len(corpus)} cases replayed")

    # 2. The fuzz run, with the other customer's client and a health probe alongside.
    victim = Victim(f"{node.ws_url}/sync/{victim_customer.slug}/fleet?token={victim_token}")
    stop = asyncio.Event()
    health: list[float] = []
    rss: list[int] = [rss_kib(node.proc.pid)]

    async def probe() -> None:
        async with httpx.AsyncClient(base_url=node.base_url, timeout=10) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = await client.get("/healthz")
                assert r.status_code == 200
                health.append(time.perf_counter() - t0)
                rss.append(rss_kib(node.proc.pid))
                await asyncio.sleep(0.25)

    victim_task = asyncio.ensure_future(victim.run(stop))
    probe_task = asyncio.ensure_future(probe())
    await asyncio.sleep(0.3)
    try:
        await attacker.run(time.monotonic() + FUZZ_SECONDS)
    finally:
        stop.set()
        await asyncio.gather(victim_task, probe_task, return_exceptions=True)
        for i, frames in enumerate(attacker.engine_failures):
            fuzz.save_case(frames, f"engine-{seed}-{i}")
    assert node.proc.poll() is None, f"the node died:\n{node.log_text()[-3000:]}"
    victim_task.result()
    probe_task.result()

    rt = sorted(victim.round_trips)
    p50, p99 = rt[len(rt) // 2], rt[int(len(rt) * 0.99)]
    print(
        f"attacker: {attacker.frames_sent} frames, closes {attacker.closes}, http {attacker.http}, "
        f"engine failures survived {len(attacker.engine_failures)}"
    )
    print(
        f"victim: {len(rt)} round trips, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {rt[-1] * 1000:.1f} ms; "
        f"healthz max {max(health) * 1000:.1f} ms; RSS {rss[0] // 1024} -> max {max(rss) // 1024} MiB"
    )

    assert attacker.frames_sent > 100
    assert not victim.errors, victim.errors
    assert len(rt) >= FUZZ_SECONDS * 3  # writes kept flowing (about 8 a second when nothing stalls)
    assert rt[-1] < 5.0 and max(health) < 5.0, "the node stalled"
    assert not attacker.http_bad, attacker.http_bad[:5]
    assert 1011 not in attacker.closes, f"unhandled server errors: {attacker.closes}"
    assert max(rss) - rss[0] < 400 * 1024, f"RSS grew from {rss[0]} to {max(rss)} KiB"

    # 3. Nothing the fuzzer did not write changed; the victim's writes are all stored.
    await asyncio.sleep(0.2)
    assert reloaded(await stored_rows(database_url, victim_customer, "archive")) == archive_before
    fleet = reloaded(await stored_rows(database_url, victim_customer, "fleet"))
    assert fleet["roots"] == {"m": victim.written}

    # 4. Every document the fuzzer wrote reloads from PostgreSQL to what the node serves.
    async with httpx.AsyncClient(
        base_url=node.base_url, timeout=30, headers={"Authorization": f"Bearer {api_key}"}
    ) as client:
        for doc in sorted(attacker.docs):
            served = await client.get(f"/api/v1/docs/{doc}")
            assert served.status_code == 200, (doc, served.status_code, served.text[:300])
            stored = reloaded(await stored_rows(database_url, attacker_customer, doc))
            assert stored == reloaded([served.content]), f"{doc}: PostgreSQL and the node disagree"
