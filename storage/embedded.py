"""The embedded PostgreSQL (the `pgserver` wheel) used when DATABASE_URL is unset.

It lives in DATA_DIR/postgres and is reused on the next start. pgserver keeps the pids of the
processes using it in DATA_DIR/postgres/.handle_pids.json and stops it when the last of them exits.
A process killed without running its exit handlers (kill -9, OOM, power loss) stays on that list,
and the server would then never be stopped again: every start first forgets the handles whose
process is gone (`_forget_dead_handles`), so a stale server from a dead run is taken over and
stopped when this process exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

log = structlog.get_logger("storage.embedded")

DATABASE_NAME = "webhost_sync"
# pid -> process start time of the handles this package registered: a pid the kernel has since given
# to an unrelated process is not mistaken for a live handle.
_STARTS_FILE = ".webhost_handle_starts.json"


class EmbeddedUnavailable(RuntimeError):
    pass


def start(data_dir: Path) -> str:
    """Start (or reuse) the embedded server and return the URL of the product's database."""
    data_dir = data_dir.resolve()
    try:
        with _runtime_dir(data_dir / "run"):
            import pgserver
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EmbeddedUnavailable(
            "DATABASE_URL is unset and the embedded PostgreSQL is not installed: "
            "pip install 'webhost-sync[embedded]' or set DATABASE_URL"
        ) from exc
    pgdata = data_dir / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    with pgserver.PostgresServer._lock:
        stale = _forget_dead_handles(pgdata)
    if stale:
        log.warning("embedded_postgres_stale_handles", pgdata=str(pgdata), dead_pids=stale)
    server = _get_server(pgserver, pgdata)
    with pgserver.PostgresServer._lock:
        _record_start(pgdata, os.getpid())
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    url = server.get_uri(DATABASE_NAME)
    log.info("embedded_postgres_ready", pgdata=str(pgdata), url=url)
    # Keep a reference so the handle (and its atexit stop) lives as long as the process.
    _handles.append(server)
    return url


_handles: list = []


@contextlib.contextmanager
def _runtime_dir(path: Path) -> Iterator[None]:
    """pgserver asks platformdirs for the user's runtime directory when it is imported (its lock
    file, and the socket when DATA_DIR's path is too long for one). Without XDG_RUNTIME_DIR (a
    container, cron, ssh without a login session) platformdirs warns on every command and falls back
    to a shared /tmp/runtime-<uid>; a private directory under DATA_DIR is given instead, for the
    import only (child processes do not inherit it)."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        yield
        return
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(path)
    try:
        yield
    finally:
        del os.environ["XDG_RUNTIME_DIR"]


def _process_start(pid: int) -> float | None:
    """When process `pid` started (psutil), None when there is none (or only its zombie)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except psutil.Error:
        return None


def _read(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return default


def _forget_dead_handles(pgdata: Path) -> list[int]:
    """Drop from pgserver's handle list every pid whose process is gone (or is another process now);
    returns the pids dropped. Call under pgserver's lock."""
    handles_path = pgdata / ".handle_pids.json"
    handles = _read(handles_path, [])
    starts = {int(pid): at for pid, at in _read(pgdata / _STARTS_FILE, {}).items()}
    alive, dead = [], []
    for pid in handles:
        at = _process_start(pid)
        recorded = starts.get(pid)
        if at is None or (recorded is not None and abs(at - recorded) > 1):
            dead.append(pid)
        else:
            alive.append(pid)
    if dead:
        handles_path.write_text(json.dumps(alive))
        _write_starts(pgdata, {pid: at for pid, at in starts.items() if pid in alive})
    return dead


def _record_start(pgdata: Path, pid: int) -> None:
    starts = {int(p): at for p, at in _read(pgdata / _STARTS_FILE, {}).items()}
    at = _process_start(pid)
    if at is not None:
        starts[pid] = at
    _write_starts(pgdata, starts)


def _write_starts(pgdata: Path, starts: dict[int, float]) -> None:
    (pgdata / _STARTS_FILE).write_text(json.dumps({str(pid): at for pid, at in starts.items()}))


def _get_server(pgserver, pgdata: Path, attempts: int = 4):
    """pgserver gives pg_ctl only 10 s to start PostgreSQL; on a loaded machine that is not always
    enough, though the server goes on starting. Asking again then finds it running and reuses it."""
    for attempt in range(1, attempts + 1):
        try:
            return pgserver.get_server(pgdata, cleanup_mode="stop")
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError, AssertionError) as exc:
            if attempt == attempts:
                raise EmbeddedUnavailable(f"embedded PostgreSQL in {pgdata} did not start: {exc}") from exc
            log.warning("embedded_postgres_slow_start", attempt=attempt, error=str(exc))
            time.sleep(2 * attempt)
