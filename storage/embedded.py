"""The embedded PostgreSQL (the `pgserver` wheel) used when DATABASE_URL is unset.

It lives in DATA_DIR/postgres, is reused on the next start, and stops when the process that
started it exits (pgserver's cleanup_mode='stop').
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import structlog

log = structlog.get_logger("storage.embedded")

DATABASE_NAME = "webhost_sync"


class EmbeddedUnavailable(RuntimeError):
    pass


def start(data_dir: Path) -> str:
    """Start (or reuse) the embedded server and return the URL of the product's database."""
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EmbeddedUnavailable(
            "DATABASE_URL is unset and the embedded PostgreSQL is not installed: "
            "pip install 'webhost-sync[embedded]' or set DATABASE_URL"
        ) from exc
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir.resolve()))  # pgserver keeps a lock file there
    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = _get_server(pgserver, pgdata)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    url = server.get_uri(DATABASE_NAME)
    log.info("embedded_postgres_ready", pgdata=str(pgdata), url=url)
    # Keep a reference so the handle (and its atexit stop) lives as long as the process.
    _handles.append(server)
    return url


_handles: list = []


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
