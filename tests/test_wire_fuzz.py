"""RFC 6455 framing from a hostile peer: a seeded, time-bounded fuzz of raw websocket bytes (header
bits, reserved opcodes, unmasked frames, lengths past 2^63 or lying either way, fragmentation broken
every way, control frames too long, close frames with codes a peer may not send, text that is not
UTF-8, TCP writes of one byte) against a real server on both SYNC_TRANSPORT=lean (our own RFC 6455
code) and hypercorn (wsproto), with another customer's client writing every 100 ms.

test_fuzz.py fuzzes what is inside the frames through a websocket library, which always frames
correctly; this one fuzzes the framing. The attacker holds its own valid token. Checks: the node
stays up and answers /healthz; RSS stays bounded; the other customer's round trips keep flowing and
are all stored; no socket is closed with 1011 and the log holds no failure; when the attacker's
sockets are gone the node holds none of them (no half-dead connection left).

WIRE_FUZZ_SECONDS (default 12 per transport) bounds the run, FUZZ_SEED picks the seed (printed).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid

import httpx
import pytest

from sync_server.sync import protocol

from .conftest import TEST_SECRET
from .support import fuzz, sync_peers
from .support.server import ServerProcess
from .test_fuzz import Victim, reloaded, rss_kib, stored_rows
from .test_sync_transport import _head, _read_frame

SECONDS = float(os.environ.get("WIRE_FUZZ_SECONDS", "12"))
CONCURRENCY = 4


def server_sockets(port: int) -> int:
    """TCP sockets on the node's side of `port` that are neither listening nor in TIME_WAIT (the
    kernel's, no longer the node's): the connections the node still holds, CLOSE_WAIT included."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] not in ("0A", "06"):
                    count += 1
    return count


class WireAttacker:
    def __init__(self, port: int, path: str, rng: random.Random) -> None:
        self.port = port
        self.path = path
        self.rng = rng
        self.wire = fuzz.WireFrames(rng, fuzz.FrameMaker(rng))
        self.sessions = 0
        self.bytes_sent = 0
        self.closes: dict[int | str, int] = {}

    def _count(self, what: int | str) -> None:
        self.closes[what] = self.closes.get(what, 0) + 1

    async def session(self) -> None:
        data = self.wire.stream()
        lied, echoes = self.wire.lied_long, self.wire.close_codes
        writes = self.wire.writes(data)
        pause = self.rng.random() < 0.3
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(_head(self.path.encode()))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 101 "), head[:200]
            for piece in writes:
                writer.write(piece)
                self.bytes_sent += len(piece)
                if pause:
                    await asyncio.sleep(0)
            if not lied:  # a valid sync step 1 after it all: answered, or the socket was closed
                writer.write(fuzz.WireFrames(self.rng, self.wire.maker).frame(2, protocol.step1_frame(b"\x00")))
            await writer.drain()
            got = await self._outcome(reader, 1.0 if lied else 10.0)
            self._count(f"echo {got}" if got in echoes else got)
        except (ConnectionError, asyncio.IncompleteReadError):
            self._count("reset")
        finally:
            writer.transport.abort()
            self.sessions += 1

    async def _outcome(self, reader: asyncio.StreamReader, wait: float) -> int | str:
        """The close code the server sent, "synced" (a sync step 2 came back), "eof" or "waiting"."""
        deadline = time.monotonic() + wait
        while True:
            try:
                opcode, payload = await asyncio.wait_for(_read_frame(reader), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return "waiting"
            except asyncio.IncompleteReadError:
                return "eof"
            if opcode == 8:
                return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if opcode == 2 and payload[:2] == bytes((protocol.SYNC, protocol.STEP2)):
                return "synced"

    async def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            await self.session()


@pytest.mark.parametrize("transport", ["lean", "hypercorn"])
async def test_hostile_framing_never_hurts_the_node_or_another_customer(transport, server_env, database_url, tmp_path):
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    print(f"\nwire fuzz seed {seed} ({SECONDS:.0f} s, {transport})")
    env = {**server_env, "SYNC_TRANSPORT": transport, "LOG_LEVEL": "warning", "TRACKING_READERS": "0"}
    node = ServerProcess(env, log_path=tmp_path / "server.log").start()
    assert node.proc is not None
    pid = node.proc.pid
    try:
        evil = await sync_peers.create_customer(database_url, slug=f"evil{uuid.uuid4().hex[:8]}")
        good = await sync_peers.create_customer(database_url, slug=f"good{uuid.uuid4().hex[:8]}")
        victim = Victim(f"{node.ws_url}/sync/{good.slug}/fleet?token={sync_peers.token(TEST_SECRET, good)}")
        stop = asyncio.Event()
        health: list[float] = []
        rss = [rss_kib(pid)]
        async with httpx.AsyncClient(base_url=node.base_url, timeout=10) as client:
            assert (await client.get("/healthz")).status_code == 200
        sockets_before = server_sockets(node.port)

        async def probe() -> None:
            async with httpx.AsyncClient(base_url=node.base_url, timeout=10) as client:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    assert (await client.get("/healthz")).status_code == 200
                    health.append(time.perf_counter() - t0)
                    rss.append(rss_kib(pid))
                    await asyncio.sleep(0.25)

        attackers = [
            WireAttacker(
                node.port,
                f"/sync/{evil.slug}/wire{i}?token={sync_peers.token(TEST_SECRET, evil)}",
                random.Random(seed * CONCURRENCY + i),
            )
            for i in range(CONCURRENCY)
        ]
        victim_task = asyncio.ensure_future(victim.run(stop))
        probe_task = asyncio.ensure_future(probe())
        await asyncio.sleep(0.3)
        deadline = time.monotonic() + SECONDS
        try:
            await asyncio.gather(*(a.run(deadline) for a in attackers))
        finally:
            stop.set()
            await asyncio.gather(victim_task, probe_task, return_exceptions=True)
        assert node.proc.poll() is None, f"the node died:\n{node.log_text()[-3000:]}"
        victim_task.result()
        probe_task.result()

        closes: dict[int | str, int] = {}
        for a in attackers:
            for k, v in a.closes.items():
                closes[k] = closes.get(k, 0) + v
        sessions = sum(a.sessions for a in attackers)
        rt = sorted(victim.round_trips)
        print(
            f"{sessions} sessions, {sum(a.bytes_sent for a in attackers):,} bytes, outcomes {closes}; "
            f"victim {len(rt)} round trips, p99 {rt[int(len(rt) * 0.99)] * 1000:.1f} ms; "
            f"healthz max {max(health) * 1000:.1f} ms; RSS {rss[0] // 1024} -> max {max(rss) // 1024} MiB"
        )
        assert sessions > 50
        # both kinds of stream were drawn (wsproto drops some broken sockets without a close frame)
        broken = closes.get(1002, 0) + (closes.get("eof", 0) if transport == "hypercorn" else 0)
        assert closes.get("synced", 0) > 0 and broken > 0, closes
        assert 1011 not in closes, f"unhandled server errors: {closes}"
        assert not victim.errors, victim.errors
        assert len(rt) >= SECONDS * 3 and rt[-1] < 5.0 and max(health) < 5.0, "the node stalled"
        assert max(rss) - rss[0] < 200 * 1024, f"RSS grew from {rss[0]} to {max(rss)} KiB"

        # every socket the attacker opened is gone from the node (none left half-open)
        settle = time.monotonic() + 15
        while server_sockets(node.port) > sockets_before and time.monotonic() < settle:
            await asyncio.sleep(0.2)
        assert server_sockets(node.port) <= sockets_before, (
            f"{server_sockets(node.port)} sockets, {sockets_before} before"
        )
        log = node.log_text()
        assert "sync_connection_failed" not in log and "Traceback" not in log, log[-3000:]

        await asyncio.sleep(0.2)
        fleet = reloaded(await stored_rows(database_url, good, "fleet"))
        assert fleet["roots"] == {"m": victim.written}
    finally:
        node.stop()
