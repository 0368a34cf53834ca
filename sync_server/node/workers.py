"""WORKERS=N: N node processes on one port, under one supervisor (`webhost-sync serve`).

The supervisor holds the port bound with SO_REUSEPORT but not listening (a busy port is exit 2
before anything starts; it accepts nothing itself), starts the embedded database when there is one,
then runs `webhost-sync serve --worker I` N times. Each worker is a whole node: its own Runtime,
pools, node id (heartbeats), a listening socket in the port's SO_REUSEPORT group (the kernel spreads
new connections over the group) and a port of its own, WORKER_PORT_BASE + I, where GET /metrics
answers that worker's numbers. Workers meet where nodes always meet: PostgreSQL and the Redis
fan-out, which is why WORKERS > 1 needs REDIS_URL (Settings refuses to start without it).

SIGTERM or SIGINT to the supervisor: each worker gets one SIGTERM and drains as a single node does
(websockets closed 1001, the update log flushed before exit); the supervisor waits for all of them
(SHUTDOWN_TIMEOUT_SECONDS and a margin, then SIGKILL) and exits 0 when every worker did. A worker
that dies while serving is started again; one that fails within START_GRACE seconds of its start (its
own port taken, the database unreachable) stops them all, and the supervisor exits with its code.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import structlog

from sync_server.config import Settings

log = structlog.get_logger("sync_server.node.workers")

START_GRACE = 10.0  # seconds: a worker exiting sooner failed to start (not restarted)
STOP_MARGIN = 15.0  # seconds past SHUTDOWN_TIMEOUT_SECONDS before a draining worker is killed
_PR_SET_PDEATHSIG = 1


def own_port(settings: Settings, index: int) -> int:
    """The port worker `index` listens on alone (its metrics address)."""
    return (settings.worker_port_base or settings.port + 1) + index


def node_id(settings: Settings, index: int) -> str | None:
    """A worker's node id: NODE_ID with the worker's number, or unset (host, pid, random: distinct)."""
    return f"{settings.node_id}-w{index}" if settings.node_id else None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies (never an orphaned worker)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class Worker:
    index: int
    env: dict[str, str]
    process: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = field(default=0)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sync_server.node.cli", "serve", "--worker", str(self.index)],
            env=self.env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only: one SIGTERM each
            preexec_fn=_die_with_parent,
        )
        self.started = time.monotonic()
        log.info("worker_started", worker=self.index, pid=self.process.pid, port=self.env["PORT"])


def supervise(settings: Settings, port: int, database_url: str) -> int:
    """Run settings.workers workers on `port` (already held by the caller) until a signal."""
    env = {
        **os.environ,
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "WORKER_PORT_BASE": str(settings.worker_port_base or port + 1),
    }
    workers = [Worker(i, env) for i in range(settings.workers)]
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if not stopping:
            stopping.append(signum)
            log.info("shutdown_requested", signal=signal.Signals(signum).name, workers=len(workers))
            for w in workers:
                if w.process is not None and w.process.poll() is None:
                    w.process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for w in workers:
        w.start()
    log.info("workers_listening", url=f"http://{settings.host}:{port}", workers=len(workers))
    failed: int | None = None
    while not stopping:
        time.sleep(0.1)
        for w in workers:
            assert w.process is not None
            code = w.process.poll()
            if code is None or stopping:
                continue
            if time.monotonic() - w.started < START_GRACE:
                log.error("worker_failed_to_start", worker=w.index, exit_code=code)
                failed = code or 1
                on_signal(signal.SIGTERM, None)
                break
            w.restarts += 1
            log.error("worker_exited", worker=w.index, exit_code=code, restarts=w.restarts)
            w.start()
    deadline = time.monotonic() + settings.shutdown_timeout + STOP_MARGIN
    codes = []
    for w in workers:
        assert w.process is not None
        try:
            codes.append(w.process.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            log.error("worker_killed", worker=w.index, after_seconds=settings.shutdown_timeout + STOP_MARGIN)
            w.process.kill()
            codes.append(w.process.wait())
    log.info("workers_stopped", exit_codes=codes)
    if failed is not None:
        return failed
    return 0 if all(code == 0 for code in codes) else 1
