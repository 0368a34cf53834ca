"""Provisioning over HTTP on a real server: recommendation (operator and API key), deployments,
and a live tenant migration shared -> dedicated (REST) -> shared (the CLI) while sync peers stay
connected and keep writing the fleet document and a track document."""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pycrdt
import pytest

from sync_server import api_keys, protocol
from storage import api_keys as key_store

from .conftest import TEST_SECRET
from .support import databases, sync_peers, tenants
from .support.server import ServerProcess


@pytest.fixture
def prov_server(server_env, tmp_path, pg_admin_url, database_url):
    env = {**server_env, "PROVISION_LOCAL_ADMIN_URL": pg_admin_url, "MIGRATION_CLEANUP_GRACE_SECONDS": "0"}
    proc = ServerProcess(env, log_path=tmp_path / "server.log").start()
    yield proc
    proc.stop()
    for name in asyncio.run(tenants.dedicated_database_names(database_url)):
        asyncio.run(databases.drop_database(pg_admin_url, databases.with_database(pg_admin_url, name)))


async def _api_key(database_url, cid) -> str:
    raw = api_keys.generate("live")
    conn = await asyncpg.connect(database_url)
    try:
        await key_store.insert(conn, customer_id=cid, name="k", prefix=api_keys.display_prefix(raw),
                               key_hash=api_keys.digest(raw), environment="live", permissions=["fleet:read"],
                               expires_at=None)
    finally:
        await conn.close()
    return raw


def test_recommendation_for_operator_and_api_key_and_validation(prov_server, database_url):
    op = asyncio.run(tenants.operator_token(database_url))
    cid = asyncio.run(tenants.seed_customer(database_url, gps_rows=1))
    key = asyncio.run(_api_key(database_url, cid))
    base = prov_server.base_url + "/api/v1/provisioning/recommendation"
    r = httpx.post(base, json={"vehicles": 150, "compliance": ["hipaa"]}, headers={"Authorization": f"Bearer {op}"})
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "single_tenant" and r.json()["plan"] == "business" and not r.json()["recorded"]
    # a customer key: stored profile (3 vehicles, 1 region) merged with what is given; recorded
    r = httpx.post(base, json={}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert (r.json()["mode"], r.json()["plan"], r.json()["recorded"]) == ("multi_tenant", "hobby", True)
    assert r.json()["profile"]["vehicles"] == 3
    r = httpx.post(base, json={"vehicles": 40}, headers={"Authorization": f"Bearer {key}"})
    assert r.json()["plan"] == "professional"
    r = httpx.post(base, json={"vehicles": -1, "colour": "red"}, headers={"Authorization": f"Bearer {op}"})
    assert r.status_code == 422 and set(r.json()["error"]["details"]["fields"]) == {"vehicles", "colour"}
    assert httpx.post(base, json={}).status_code == 401
    listed = httpx.get(prov_server.base_url + f"/api/v1/customers/{cid}/recommendations",
                       headers={"Authorization": f"Bearer {op}"}).json()["data"]
    assert [x["trigger"] for x in listed] == ["request", "request"]


def test_deployment_endpoints(prov_server, database_url):
    op = asyncio.run(tenants.operator_token(database_url))
    h = {"Authorization": f"Bearer {op}"}
    cid = asyncio.run(tenants.seed_customer(database_url, gps_rows=1))
    base = prov_server.base_url + "/api/v1/deployments"
    r = httpx.post(base, json={"customer_id": str(cid), "mode": "single_tenant", "infrastructure": "flyio"}, headers=h)
    assert r.status_code == 422 and "FLY_API_TOKEN" in r.json()["error"]["message"]
    r = httpx.post(base, json={"customer_id": str(cid), "mode": "single_tenant", "infrastructure": "local"}, headers=h)
    assert r.status_code == 202, r.text
    dep = r.json()
    assert httpx.post(base, json={"customer_id": str(cid), "mode": "multi_tenant", "infrastructure": "local"},
                      headers=h).status_code == 409
    for _ in range(200):
        shown = httpx.get(f"{base}/{dep['id']}", headers=h).json()
        if shown["status"] != "provisioning":
            break
    assert shown["status"] == "active" and shown["database_url"] is None
    assert [e["step"] for e in shown["events"]][:2] == ["create", "provision"]
    assert [d["id"] for d in httpx.get(base, params={"customer_id": str(cid)}, headers=h).json()["data"]] == [dep["id"]]
    assert httpx.get(f"{base}/not-a-uuid", headers=h).status_code == 404
    r = httpx.post(f"{base}/{dep['id']}/decommission", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "decommissioned"


class Writer:
    """A connected sync peer that keeps appending to one Y.Array and reads everything it is sent."""

    def __init__(self, peer: sync_peers.RawPeer, array: str) -> None:
        self.peer, self.array, self.sent = peer, array, 0
        self.stop = asyncio.Event()

    async def read(self) -> None:
        try:
            while True:
                await self.peer.recv(timeout=120)
        except Exception:
            pass

    async def write(self) -> None:
        arr = self.peer.doc.get(self.array, type=pycrdt.Array)
        while not self.stop.is_set():
            before = self.peer.doc.get_state()
            arr.append({"t": dt.datetime.now(dt.timezone.utc).isoformat(), "lat": 52.5, "lng": 13.4, "n": self.sent})
            await self.peer.send(protocol.update_frame(self.peer.doc.get_update(before)))
            self.sent += 1
            await asyncio.sleep(0.01)


async def _wait(client, url, *statuses):
    for _ in range(1200):
        mig = (await client.get(url)).json()
        if mig["status"] in statuses or mig["status"] == "failed":
            return mig
        await asyncio.sleep(0.1)
    raise AssertionError(f"migration stuck: {mig}")


def test_live_migration_shared_dedicated_shared_with_connected_writers(prov_server, database_url):
    asyncio.run(_live_migration(prov_server, database_url))


async def _live_migration(server, database_url):
    cid = await tenants.seed_customer(database_url, slug="fleetco", gps_rows=50_000, old_rows=120, plan="hobby")
    op = await tenants.operator_token(database_url)
    before = await tenants.snapshot(database_url, cid)
    customer = sync_peers.Customer(str(cid), "fleetco")
    tok = sync_peers.token(TEST_SECRET, customer)
    track = "tracks/v1/" + dt.date.today().isoformat()
    writers, readers = [], []
    for doc, array in (("fleet", "vehicles"), (track, "points")):
        w = Writer(await sync_peers.RawPeer.connect(f"{server.ws_url}/sync/fleetco/{doc}?token={tok}"), array)
        r = Writer(await sync_peers.RawPeer.connect(f"{server.ws_url}/sync/fleetco/{doc}?token={tok}"), array)
        for peer in (w, r):
            await peer.peer.sync()
        writers.append(w)
        readers.append(r)
    tasks = [asyncio.create_task(w.write()) for w in writers]
    tasks += [asyncio.create_task(p.read()) for p in writers + readers]
    h = {"Authorization": f"Bearer {op}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=h, timeout=60) as client:
        await asyncio.sleep(0.5)
        r = await client.post(f"/api/v1/customers/{cid}/migrations", json={"to": "single_tenant"})
        assert r.status_code == 202, r.text
        up = await _wait(client, f"/api/v1/customers/{cid}/migrations/{r.json()['id']}", "switched", "cleaned")
        assert up["status"] in ("switched", "cleaned"), up.get("error")
        await asyncio.sleep(0.5)  # writers keep going on the dedicated database

        # down again with the CLI (in a thread: it blocks while the peers keep writing)
        env = {**os.environ, "WEBHOST_OPERATOR_TOKEN": op}
        cli = [str(Path(sys.executable).parent / "webhost-sync"), "migrate-tenant", "--server", server.base_url,
               "--customer", str(cid), "--to", "multi_tenant"]
        refused = await asyncio.to_thread(subprocess.run, cli, env=env, capture_output=True, text=True, timeout=120,
                                          stdin=subprocess.DEVNULL)
        assert refused.returncode == 1 and "gps_positions: 120" in refused.stdout and "--yes" in refused.stderr
        down = await asyncio.to_thread(subprocess.run, cli + ["--yes"], env=env, capture_output=True, text=True,
                                       timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "100.0%" in down.stderr and "switched: writes paused" in down.stdout
        await asyncio.sleep(0.5)
        for w in writers:
            w.stop.set()
        await asyncio.sleep(1.0)
        migs = (await client.get(f"/api/v1/customers/{cid}/migrations/{r.json()['id']}")).json()
    for t in tasks:
        t.cancel()
    # every peer converged without reconnecting; every update is stored in the shared database again
    for w, rd, doc in zip(writers, readers, ("fleet", track)):
        arr = w.peer.doc.get(w.array, type=pycrdt.Array)
        assert len(arr) == w.sent > 100
        assert rd.peer.doc.get(w.array, type=pycrdt.Array).to_py() == arr.to_py()
        for _ in range(100):
            stored = await sync_peers.stored_doc(database_url, customer, doc)
            if len(stored.get(w.array, type=pycrdt.Array)) == w.sent:
                break
            await asyncio.sleep(0.1)
        assert stored.get(w.array, type=pycrdt.Array).to_py() == arr.to_py()
        assert w.peer.ws.close_code is None
    final = await tenants.snapshot(database_url, cid)
    assert final["gps_positions"]["rows"] == before["gps_positions"]["rows"] - 120
    for name in ("vehicles", "geofences", "drivers", "geofence_events", "vehicle_positions_latest"):
        assert final[name] == before[name], name
    said = [line for line in down.stdout.splitlines() if line.startswith("switched")]
    print(f"\nwrite pause: up {up['pause_ms']:.0f} ms; down (CLI): {said}")
    assert migs["pause_ms"] is not None
