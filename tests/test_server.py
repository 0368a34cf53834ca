"""The server as operators run it: `webhost-sync serve`."""

import signal
import subprocess
import time

import httpx

from .support.server import ServerProcess


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


def _postgres_running(data) -> bool:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return any(str(data / "postgres") in line and "postgres" in line.split()[0] for line in out.splitlines())
