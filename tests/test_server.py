"""The server as operators run it: `webhost-sync serve`."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .support.server import ServerProcess
from .support.tenants import operator_token


def test_health_and_readiness(server):
    r = httpx.get(server.base_url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = httpx.get(server.base_url + "/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["checks"]["postgres"]["ok"] and body["checks"]["migrations"]["ok"]
    assert r.headers["X-Request-ID"]


def test_unknown_route_answers_in_the_error_format(server):
    r = httpx.get(server.base_url + "/no/such/thing", headers={"X-Request-ID": "req-123"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert r.headers["X-Request-ID"] == "req-123"


def test_readyz_reports_redis_when_configured(server_env, redis_url, tmp_path):
    proc = ServerProcess({**server_env, "REDIS_URL": redis_url}, log_path=tmp_path / "s.log").start()
    try:
        checks = httpx.get(proc.base_url + "/readyz").json()["checks"]
        assert checks["redis"]["ok"] is True
    finally:
        proc.stop()


def test_readyz_is_degraded_not_down_when_redis_is_unreachable(server_env, tmp_path):
    proc = ServerProcess({**server_env, "REDIS_URL": "redis://127.0.0.1:1/0"}, log_path=tmp_path / "s.log").start()
    try:
        r = httpx.get(proc.base_url + "/readyz")
        assert r.status_code == 200
        assert r.json()["status"] == "degraded" and r.json()["checks"]["redis"]["ok"] is False
    finally:
        proc.stop()


def test_busy_port_is_one_line_and_exit_code_2_before_anything_starts(server_env, tmp_path):
    """A second server on a busy port: one line naming the port, exit 2, nothing started or logged
    as started (the port is bound before the runtime and even the embedded database)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for env in (server_env, {**server_env, "DATABASE_URL": ""}):
            result = subprocess.run(
                [str(Path(sys.executable).parent / "webhost-sync"), "serve"],
                env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port), "LOG_FORMAT": "json"},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 2, result.stderr
            assert result.stdout == ""
            [line] = result.stderr.splitlines()
            assert line == f"webhost-sync: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert not (tmp_path / "data" / "postgres").exists(), "the embedded database started for nothing"


def _status_line(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, head
            head += chunk
    return head.split(b"\r\n", 1)[0]


def test_status_lines_carry_the_reason_phrase(server, database_url):
    """h11 writes `HTTP/1.1 201 ` without a reason; some clients and proxies call that malformed."""
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _status_line(server.port, get) == b"HTTP/1.1 200 OK"
    missing = b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _status_line(server.port, missing) == b"HTTP/1.1 404 Not Found"
    token = asyncio.run(operator_token(database_url)).encode()
    body = b'{"slug": "reason-co", "name": "Reason Co", "plan_id": "hobby"}'
    post = (
        b"POST /api/v1/customers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
    )
    assert _status_line(server.port, post % (token, len(body), body)) == b"HTTP/1.1 201 Created"
    assert _status_line(server.port, post % (b"nope", len(body), body)) == b"HTTP/1.1 401 Unauthorized"
    upgrade = (
        b"GET /sync/fleet HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert _status_line(server.port, upgrade) == b"HTTP/1.1 101 Switching Protocols"


def test_embedded_postgres_starts_is_reused_and_stops(tmp_path):
    data = tmp_path / "data"
    env = {"DATA_DIR": str(data), "DATABASE_URL": "", "SECRET_KEY": ""}
    started = time.monotonic()
    proc = ServerProcess(env, log_path=tmp_path / "s1.log").start(timeout=90)
    first_start = time.monotonic() - started
    try:
        assert httpx.get(proc.base_url + "/readyz").json()["checks"]["postgres"]["ok"]
        assert (data / "postgres" / "PG_VERSION").exists()
        assert (data / "secret_key").exists()
    finally:
        assert proc.stop(signal.SIGTERM) == 0
    assert "embedded PostgreSQL in" in proc.log_text()
    assert not _postgres_running(data), "embedded PostgreSQL kept running after the server stopped"
    # Second start reuses the same data folder (no new initdb; migrations are a no-op).
    proc = ServerProcess(env, log_path=tmp_path / "s2.log").start(timeout=90)
    try:
        assert httpx.get(proc.base_url + "/readyz").status_code == 200
    finally:
        proc.stop()
    assert "migration_applied" not in proc.log_text()
    print(f"embedded first start to /healthz: {first_start:.1f}s")


def test_embedded_postgres_of_a_killed_server_is_taken_over_and_stopped(tmp_path):
    """kill -9 leaves the embedded server running with the dead process still on pgserver's handle
    list; the next server takes it over and its SIGTERM stops it (issue 21)."""
    data = tmp_path / "data"
    env = {"DATA_DIR": str(data), "DATABASE_URL": "", "SECRET_KEY": ""}
    first = ServerProcess(env, log_path=tmp_path / "s1.log")
    first.env.pop("XDG_RUNTIME_DIR", None)  # no login session: pgserver must not warn about it
    try:
        first.start(timeout=90)
        first.kill()
        assert _postgres_running(data), "kill -9 of the server stopped PostgreSQL too: nothing to take over"
        second = ServerProcess(env, log_path=tmp_path / "s2.log")
        second.env.pop("XDG_RUNTIME_DIR", None)
        second.start(timeout=90)
        try:
            assert httpx.get(second.base_url + "/readyz").json()["checks"]["postgres"]["ok"]
        finally:
            assert second.stop(signal.SIGTERM) == 0
        log = second.log_text()
        assert "embedded_postgres_stale_handles" in log and str(first.proc.pid) in log, log[-3000:]
        assert not _postgres_running(data), "the taken-over embedded PostgreSQL kept running after SIGTERM"
        for text in (first.log_text(), log):
            assert "RuntimeDirWarning" not in text and "XDG_RUNTIME_DIR" not in text
    finally:
        _stop_postgres(data)


def _stop_postgres(data) -> None:
    """Leave no server behind when the test fails (fast shutdown of the postmaster)."""
    pid_file = data / "postgres" / "postmaster.pid"
    if _postgres_running(data) and pid_file.exists():
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)


def _postgres_running(data) -> bool:
    """A postgres process serving DATA_DIR/postgres is alive (its full command line: `ps` cuts it)."""
    pgdata = str(data / "postgres")
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args[0].endswith(b"/postgres") and pgdata.encode() in args:
            return True
    return False
