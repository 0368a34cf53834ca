"""GET /metrics (sync_server/extensions/metrics.py) on a real server while real JS y-websocket
clients write, a tracker posts fixes and REST is called: the counters move and the answer parses
with prometheus_client's own text parser; scrapes are refused as METRICS_TOKEN (or its absence) says."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import TEST_SECRET
from .support import fleet, sync_peers
from .support.server import ServerProcess
from .support.sync_peers import js_start, rest_of

pytestmark = pytest.mark.js
DEVICE = "whd_device-secret-for-metrics-truck"


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}; every family named webhost_*."""
    samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("webhost_"), family.name
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples, name: str, **labels) -> float:
    """Sum over every sample of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def scrape(server, **headers) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        return await http.get("/metrics", headers=headers)


async def test_metrics_move_during_js_client_traffic_and_parse(server, db, database_url):
    before = parse((await scrape(server)).text)
    customer = await sync_peers.create_customer(database_url, slug="metrics")
    tok = sync_peers.token(TEST_SECRET, customer)
    url = f"{server.ws_url}/sync/{customer.slug}"
    n = 40

    def peer(token: str, *steps: dict):
        plan = {"server": url, "doc": "fleet", "token": token, "read": {"maps": ["m"]}, "steps": list(steps)}
        return js_start("peer.mjs", json.dumps(plan))

    synced, hold = {"op": "synced"}, {"op": "sleep", "ms": 4000}
    reader = peer(
        tok,
        synced,
        {"op": "awareness", "state": {"user": "r"}},
        {"op": "waitKey", "map": "m", "key": f"k{n - 1}"},
        hold,
    )
    writer = peer(
        tok,
        synced,
        {"op": "awareness", "state": {"user": "w"}},
        {"op": "waitPresence", "count": 1},  # the reader is in the room: every update reaches both
        {"op": "setMany", "map": "m", "count": n},
        {"op": "flush"},
        hold,
    )
    refused = peer("nope", {"op": "waitClosed"})  # a bad token: closed 4401 before it joins a room
    # a tracker posts two fixes, one of them at null island (rejected)
    cid = customer.id
    await fleet.vehicle(db, cid, "truck-1", fleet.secret_hash(DEVICE))
    now = int(time.time())
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        for lat, lon, t in (("52.5", "13.4", now - 20), ("0", "0", now - 10)):
            r = await http.get(
                f"/ingest/osmand/{customer.slug}",
                params={"id": "truck-1", "key": DEVICE, "lat": lat, "lon": lon, "timestamp": str(t)},
            )
            assert r.status_code == 200, r.text
        assert (await http.get("/api/v1/vehicles")).status_code == 401  # REST, by route template

    during, deadline = None, time.monotonic() + 60
    while time.monotonic() < deadline:
        during = parse((await scrape(server)).text)
        if total(during, "webhost_updates_stored_total") - total(before, "webhost_updates_stored_total") >= n:
            break
        await asyncio.sleep(0.2)
    assert during is not None
    moved = {
        name + "".join(f"/{v}" for v in labels.values()): total(during, name, **labels) - total(before, name, **labels)
        for name, labels in (
            ("webhost_updates_received_total", {"origin": "websocket"}),
            ("webhost_updates_relayed_total", {}),
            ("webhost_updates_stored_total", {}),
            ("webhost_sync_received_bytes_total", {"kind": "update"}),
            ("webhost_sync_sent_bytes_total", {"kind": "update"}),
            ("webhost_sync_received_bytes_total", {"kind": "awareness"}),
            ("webhost_group_commit_seconds_count", {}),
            ("webhost_group_commit_rows_sum", {}),
            ("webhost_websocket_closes_total", {"code": "4401"}),
            ("webhost_gps_points_materialized_total", {"source": "osmand"}),
            ("webhost_gps_points_rejected_total", {"reason": "null_island"}),
            ("webhost_gps_pipeline_lag_seconds_count", {"source": "osmand"}),
            (
                "webhost_http_request_duration_seconds_count",
                {"route": "/ingest/osmand/<customer_slug>", "status": "200"},
            ),
            ("webhost_http_request_duration_seconds_count", {"route": "/api/v1/vehicles", "status": "401"}),
        )
    }
    print("\nmoved during the run:", moved)
    assert moved.pop("webhost_updates_received_total/websocket") >= n
    assert moved.pop("webhost_updates_stored_total") >= n
    assert moved.pop("webhost_group_commit_rows_sum") >= n
    assert moved.pop("webhost_updates_relayed_total") >= 2 * n  # each update queued to both peers of the room
    assert moved.pop("webhost_sync_sent_bytes_total/update") >= moved.pop("webhost_sync_received_bytes_total/update")
    assert moved.pop("webhost_gps_points_materialized_total/osmand") == 1
    assert moved.pop("webhost_gps_points_rejected_total/null_island") == 1
    assert all(v >= 1 for v in moved.values()), moved
    assert value(during, "webhost_connections_open") >= 2 and value(during, "webhost_rooms_open") >= 1
    assert value(during, "webhost_db_pool_connections", database="shared", state="in_use") >= 0
    assert value(during, "webhost_db_pool_max", database="shared") == 20
    assert value(during, "webhost_process_resident_memory_bytes") > 10_000_000
    assert value(during, "webhost_disk_free_bytes") > 0
    for proc in (reader, writer, refused):
        out, err = rest_of(proc, 60)
        assert proc.returncode == 0, err
    after = parse((await scrape(server)).text)
    assert total(after, "webhost_websocket_closes_total") - total(before, "webhost_websocket_closes_total") >= 3


async def test_metrics_token_is_required_when_set(server_env, tmp_path):
    proc = ServerProcess({**server_env, "METRICS_TOKEN": "scrape-token-123"}, log_path=tmp_path / "s.log").start()
    try:
        missing = await scrape(proc)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        assert (await scrape(proc, Authorization="Bearer wrong")).status_code == 401
        assert (await scrape(proc, Authorization="Basic c2NyYXBlLXRva2VuLTEyMw==")).status_code == 401
        ok = await scrape(proc, Authorization="Bearer scrape-token-123")
        assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain")
        assert value(parse(ok.text), "webhost_rooms_open") == 0
    finally:
        proc.stop()


def _own_address() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: it only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


async def test_without_a_token_only_loopback_clients_are_answered(server_env, tmp_path):
    address = _own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to scrape from")
    proc = ServerProcess(server_env, log_path=tmp_path / "s.log")
    proc.env["HOST"] = "0.0.0.0"
    proc.start()
    try:
        assert (await scrape(proc)).status_code == 200  # 127.0.0.1
        async with httpx.AsyncClient(base_url=f"http://{address}:{proc.port}") as http:
            r = await http.get("/metrics")
            assert r.status_code == 403 and "METRICS_TOKEN" in r.json()["error"]["message"], r.text
            assert (await http.get("/healthz")).status_code == 200  # the node itself answers that address
    finally:
        proc.stop()
