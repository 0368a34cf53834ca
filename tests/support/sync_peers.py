"""Test peers of the sync endpoint: a customer in the test database, tokens for it, a minimal raw
y-websocket peer on `websockets` (for protocol-level checks), and the real JS clients of
client-examples/js (for behaviour)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pycrdt
import websockets

from sync_server.domain.accounts import sync_tokens
from sync_server.sync import protocol

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "client-examples" / "js"


@dataclass
class Customer:
    id: str
    slug: str


async def create_customer(database_url: str, slug: str = "acme", status: str = "active") -> Customer:
    conn = await asyncpg.connect(database_url)
    try:
        cid = await conn.fetchval(
            "INSERT INTO customers (slug, name, status) VALUES ($1, $2, $3) RETURNING id", slug, slug.title(), status
        )
    finally:
        await conn.close()
    return Customer(str(cid), slug)


async def set_status(database_url: str, customer: Customer, status: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE customers SET status = $2 WHERE id = $1", customer.id, status)
    finally:
        await conn.close()


async def stored_updates(database_url: str, customer: Customer, doc: str) -> tuple[int, bytes | None, list[bytes]]:
    """(row count, snapshot, log rows) of one doc, read as the schema owner (bypasses RLS)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT update FROM doc_updates WHERE customer_id = $1 AND doc = $2 ORDER BY seq", customer.id, doc
        )
        snap = await conn.fetchval(
            "SELECT state FROM doc_snapshots WHERE customer_id = $1 AND doc = $2", customer.id, doc
        )
    finally:
        await conn.close()
    return len(rows), snap, [r["update"] for r in rows]


async def log_rows(database_url: str, customer_id: str, doc: str, updates: list[bytes]) -> None:
    """Rows straight into the update log in this order (as the schema owner, COPY), as if clients
    had sent them."""
    conn = await asyncpg.connect(database_url)
    try:
        cid = uuid.UUID(str(customer_id))
        await conn.copy_records_to_table(
            "doc_updates", columns=["customer_id", "doc", "update"], records=[(cid, doc, u) for u in updates]
        )
    finally:
        await conn.close()


async def stored_doc(database_url: str, customer: Customer, doc: str) -> pycrdt.Doc:
    _, snap, rows = await stored_updates(database_url, customer, doc)
    ydoc = pycrdt.Doc()
    if snap:
        ydoc.apply_update(snap)
    for row in rows:
        ydoc.apply_update(row)
    return ydoc


def token(secret: str, customer: Customer, docs=("*",), mode: str = "rw", ttl: int = 3600) -> str:
    return sync_tokens.mint(
        secret, customer_id=customer.id, customer_slug=customer.slug, docs=list(docs), mode=mode, ttl_seconds=ttl
    )[0]


class RawPeer:
    """A y-websocket peer speaking the protocol by hand, holding a pycrdt Doc."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.doc = pycrdt.Doc()
        self.awareness: dict[int, str | None] = {}
        self.frames: list[bytes] = []

    @classmethod
    async def connect(cls, url: str, **kwargs) -> RawPeer:
        ws = await websockets.connect(url, max_size=None, **kwargs)
        return cls(ws)

    async def send(self, frame) -> None:
        await self.ws.send(frame)

    async def recv(self, timeout: float = 10.0) -> bytes:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        self.frames.append(frame)
        msg = protocol.decode(frame)
        if isinstance(msg, protocol.SyncUpdate):
            self.doc.apply_update(msg.update)
        elif isinstance(msg, protocol.SyncStep1):
            await self.send(protocol.step2_frame(self.doc.get_update(msg.state_vector)))
        elif isinstance(msg, protocol.AwarenessUpdate):
            for client, _clock, state in msg.entries:
                self.awareness[client] = state
        return frame

    async def sync(self, timeout: float = 10.0) -> None:
        """Send step 1 and read until the server's step 2 arrived."""
        await self.send(protocol.step1_frame(self.doc.get_state()))
        while True:
            frame = await self.recv(timeout)
            if frame[:2] == bytes((protocol.SYNC, protocol.STEP2)):
                return

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Read until the server closes; (code, reason)."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed as exc:
            rcvd = exc.rcvd
            return (rcvd.code if rcvd else None), (rcvd.reason if rcvd else "")

    async def close(self) -> None:
        await self.ws.close()


def js(script: str, *args: str, timeout: float = 120.0, **kwargs) -> dict:
    """Run a script of client-examples/js and return its last stdout line as JSON."""
    proc = subprocess.run(
        ["node", str(JS_DIR / script), *args], capture_output=True, text=True, timeout=timeout, cwd=JS_DIR, **kwargs
    )
    if proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}:\n{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


def tracker(ws_url: str, secret: str, customer: Customer, vehicle, day: str, *args: str) -> dict:
    """client-examples/js/tracker.mjs recording into `tracks/{vehicle}/{day}` with a token for the
    vehicle's tracks; `args` its other options (--points, --fixes, --offline, ...)."""
    return js(
        "tracker.mjs",
        "--server",
        f"{ws_url}/sync/{customer.slug}",
        "--token",
        token(secret, customer, docs=[f"tracks/{vehicle}/*"]),
        "--vehicle",
        str(vehicle),
        "--day",
        day,
        *args,
    )


async def js_checkpoints(
    script: Path, plan: dict, on_line, *, end: str, timeout: float = 180.0, env: dict[str, str] | None = None
) -> list[dict]:
    """Run a node script that prints JSON lines (`{"event": ...}`) and may block on stdin at a
    checkpoint: `await on_line(line)` sees each line, and a True answer writes "go" to unblock
    it; stops after the line whose event is `end`. Returns every line; kills the script on failure.
    `env`: the script's environment (a browser test's `browsers.env(browser)`), else this one's."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        json.dumps(plan),
        cwd=script.parent,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout and proc.stdin and proc.stderr
    lines: list[dict] = []
    try:
        while True:
            raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
            assert raw, f"{script.name} ended early: {(await proc.stderr.read()).decode()[-3000:]}"
            line = json.loads(raw)
            lines.append(line)
            if await on_line(line):
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            if line.get("event") in (end, "timeout"):
                break
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return lines


def js_start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["node", str(JS_DIR / script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=JS_DIR
    )


def next_line(proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    """The next JSON line a started client prints; a client that exits first (or is silent past
    `timeout`, then killed) fails the test at once with its exit code and stderr."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        line = proc.stdout.readline()
    finally:
        timer.cancel()
    if not line.strip():
        proc.wait(10)
        raise AssertionError(f"client exited {proc.returncode} before its next line:\n{proc.stderr.read()[-4000:]}")
    return json.loads(line)


def rest_of(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """What a started client still prints (stdout, stderr) once it exits; killed past `timeout`.
    stdout is read through the buffered reader `readline` used: communicate() reads the raw pipe and
    misses lines readline already buffered (a client's last line, printed right after a mark)."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        out = proc.stdout.read()
        err = proc.stderr.read()
        proc.wait()
    finally:
        timer.cancel()
    return out, err


async def create_api_key(database_url: str, customer: Customer, permissions: list[str]) -> str:
    from storage import api_keys as key_store
    from sync_server.domain.accounts import api_keys

    raw = api_keys.generate("live")
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.customer_id', $1, true)", customer.id)
            await key_store.insert(
                conn,
                customer_id=customer.id,
                name="server",
                prefix=api_keys.display_prefix(raw),
                key_hash=api_keys.digest(raw),
                environment="live",
                permissions=permissions,
                expires_at=None,
            )
    finally:
        await conn.close()
    return raw


def array_pushes(count: int) -> list[bytes]:
    """`count` real Yjs updates, one Y.Array `log` push of {i} each, made with pycrdt (a long log)."""
    doc = pycrdt.Doc()
    log = doc.get("log", type=pycrdt.Array)
    updates: list[bytes] = []
    subscription = doc.observe(lambda event: updates.append(event.update))
    for i in range(count):
        log.append({"i": i})
    doc.unobserve(subscription)
    return updates
