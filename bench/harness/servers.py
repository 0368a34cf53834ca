"""The two servers under test, started fresh for every measured run on a free 127.0.0.1 port:
ours (`webhost-sync serve` on the bench database) and the reference (`y-websocket@1.5.4`
bin/server.js under Node). Both serve rooms at ws://127.0.0.1:PORT/sync/bench/{doc}; the reference
names the room after the whole path and ignores the token."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

from tests.support.server import ServerProcess, free_port

from . import procstat
from .clients import BENCH
from .database import SLUG, BenchDatabase

OURS = "ours"
REFERENCE = "reference"
SECRET_KEY = "bench-secret-key-0123456789abcdef0123456789"


class Unavailable(RuntimeError):
    """This side cannot run this scenario (yet): recorded as "not available", not as a failure."""


class Server:
    side: str
    pid: int
    ws_base: str
    token: str | None = None
    db_name: str | None = None  # the PostgreSQL database whose backends work for this server

    def cpu_seconds(self) -> tuple[float, float | None]:
        """CPU used so far by the server process, and by its PostgreSQL backends (None: it has none)."""
        db = procstat.backend_cpu_seconds(self.db_name) if self.db_name else None
        return procstat.cpu_seconds(self.pid), db

    def stop(self) -> None:
        raise NotImplementedError


class Reference(Server):
    side = REFERENCE

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.ws_base = f"ws://127.0.0.1:{self.port}/sync/{SLUG}"
        self._log = open(log_dir / f"reference.{self.port}.log", "wb")
        script = BENCH / "node_modules" / "y-websocket" / "bin" / "server.js"
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port)}
        self.proc = subprocess.Popen(
            [shutil.which("node") or "node", str(script)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=BENCH,
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"reference server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise Unavailable("reference server did not listen within 20s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def mint_token(customer_id: str) -> str:
    """A read-write sync token for every document of the bench customer, from the project's own module."""
    try:
        from sync_server.domain.accounts import sync_tokens
    except ImportError as exc:
        raise Unavailable(f"sync_server.domain.accounts.sync_tokens is missing ({exc})") from None
    token, _expires = sync_tokens.mint(
        SECRET_KEY, customer_id=customer_id, customer_slug=SLUG, docs=["*"], mode="rw", ttl_seconds=6 * 3600
    )
    return token


class Ours(Server):
    side = OURS

    def __init__(self, log_dir: Path, database: BenchDatabase, extra_env: dict[str, str] | None = None) -> None:
        env = {
            "DATABASE_URL": database.url,
            "SECRET_KEY": SECRET_KEY,
            "DATA_DIR": str(log_dir / "data"),
            "LOG_LEVEL": "warning",
            # Shutdown is not measured here, and it waits out the whole graceful timeout even with
            # no client left (seen with the sync core of ab7f44b): 1 s instead of 30 per run.
            "SHUTDOWN_TIMEOUT_SECONDS": "1",
            **(extra_env or {}),
        }
        self.token = mint_token(database.customer_id)
        port = free_port()
        self.process = ServerProcess(env, log_path=log_dir / f"ours.{port}.log", port=port)
        try:
            self.process.start(timeout=60)
        except RuntimeError as exc:
            raise Unavailable(f"`webhost-sync serve` did not start: {str(exc)[:300]}") from None
        self.pid = self.process.proc.pid
        self.db_name = urlparse(database.url).path.lstrip("/")
        self.ws_base = f"ws://127.0.0.1:{port}/sync/{SLUG}"

    def stop(self) -> None:
        self.process.stop(timeout=10)  # a server whose loop is stuck gets SIGKILL after 10 s


def start(side: str, log_dir: Path, database: BenchDatabase | None) -> Server:
    if side == REFERENCE:
        return Reference(log_dir)
    if database is None:
        raise Unavailable("no bench database")
    return Ours(log_dir, database)
