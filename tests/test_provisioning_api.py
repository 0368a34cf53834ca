"""Provisioning over HTTP on a real server: recommendation (operator and API key), deployments,
and a live tenant migration shared -> dedicated (REST) -> shared (the CLI) while real JS clients stay
connected and keep writing the fleet document and a track document."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pycrdt
import pytest

from storage import api_keys as key_store
from storage import deployments as store
from sync_server.domain.accounts import api_keys

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


async def _api_key(database_url, cid, permissions=("fleet:read",)) -> str:
    raw = api_keys.generate("live")
    conn = await asyncpg.connect(database_url)
    try:
        await key_store.insert(
            conn,
            customer_id=cid,
            name="k",
            prefix=api_keys.display_prefix(raw),
            key_hash=api_keys.digest(raw),
            environment="live",
            permissions=list(permissions),
            expires_at=None,
        )
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
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed"
    assert {e["field"] for e in r.json()["error"]["details"]["errors"]} == {"vehicles", "colour"}
    assert httpx.post(base, json={}).status_code == 401
    listed = httpx.get(
        prov_server.base_url + f"/api/v1/customers/{cid}/recommendations", headers={"Authorization": f"Bearer {op}"}
    ).json()["data"]
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
    assert (
        httpx.post(
            base, json={"customer_id": str(cid), "mode": "multi_tenant", "infrastructure": "local"}, headers=h
        ).status_code
        == 409
    )
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


async def _wait(client, url, *statuses):
    for _ in range(1200):
        mig = (await client.get(url)).json()
        if mig["status"] in statuses or mig["status"] == "failed":
            return mig
        await asyncio.sleep(0.1)
    raise AssertionError(f"migration stuck: {mig}")


def _js_writer(
    server, tok: str, doc: str, name: str, stop_file: Path, target: dict, slot: int, origin_ms: int
) -> subprocess.Popen:
    """A real JS client (client-examples/js/peer.mjs) that syncs, says so on stdout, writes one GPS
    point every 20 ms until `stop_file` exists, then waits until it holds every writer's points.
    Points go north from the seeded last position at about 1 m/s and no two writers share a
    millisecond, so the tracking pipeline accepts every one of them."""
    target = {**target, "slot": slot, "slots": 2, "originMs": origin_ms}
    plan = {
        "server": f"{server.ws_url}/sync/fleetco",
        "doc": doc,
        "token": tok,
        "name": name,
        "timeoutMs": 120000,
        "read": {
            "maps": ["done", *([target["map"]] if "map" in target else [])],
            "arrays": [target["array"]] if "array" in target else [],
        },
        "steps": [
            {"op": "synced"},
            {"op": "print", "mark": "ready"},
            {"op": "writeUntil", **target, "stopFile": str(stop_file), "everyMs": 20, "doneMap": "done"},
            {"op": "waitWritten", **target, "doneMap": "done", "writers": 2},
            {"op": "flush"},
        ],
    }
    return sync_peers.js_start("peer.mjs", json.dumps(plan))


def test_live_migration_shared_dedicated_shared_with_connected_js_clients(prov_server, database_url, tmp_path):
    asyncio.run(_live_migration(prov_server, database_url, tmp_path))


async def _live_migration(server, database_url, tmp_path):
    cid = await tenants.seed_customer(database_url, slug="fleetco", gps_rows=50_000, old_rows=120, plan="hobby")
    op = await tenants.operator_token(database_url)
    before = await tenants.snapshot(database_url, cid)
    customer = sync_peers.Customer(str(cid), "fleetco")
    tok = sync_peers.token(TEST_SECRET, customer)
    conn = await asyncpg.connect(database_url)
    try:
        vehicle = await conn.fetchval("SELECT id FROM vehicles WHERE customer_id = $1 ORDER BY name LIMIT 1", cid)
    finally:
        await conn.close()
    track = f"tracks/{vehicle}/{dt.datetime.now(dt.UTC).date().isoformat()}"
    stop = tmp_path / "stop-writing"
    docs = {"fleet": {"map": "positions"}, track: {"array": "points"}}
    origin_ms = int(time.time() * 1000)
    clients = [
        (doc, target, _js_writer(server, tok, doc, f"{doc}#{i}", stop, target, i, origin_ms))
        for doc, target in docs.items()
        for i in range(2)
    ]
    try:
        for _, _, proc in clients:  # every client synced and about to write
            assert (await asyncio.to_thread(sync_peers.next_line, proc))["mark"] == "ready"
        h = {"Authorization": f"Bearer {op}"}
        async with httpx.AsyncClient(base_url=server.base_url, headers=h, timeout=60) as client:
            await asyncio.sleep(0.5)
            r = await client.post(f"/api/v1/customers/{cid}/migrations", json={"to": "single_tenant"})
            assert r.status_code == 202, r.text
            up = await _wait(client, f"/api/v1/customers/{cid}/migrations/{r.json()['id']}", "switched", "cleaned")
            assert up["status"] in ("switched", "cleaned"), up.get("error")
            await asyncio.sleep(0.5)  # the clients keep writing on the dedicated database

            # down again with the CLI (in a thread: it blocks while the clients keep writing)
            env = {**os.environ, "WEBHOST_OPERATOR_TOKEN": op}
            cli = [
                str(Path(sys.executable).parent / "webhost-sync"),
                "migrate-tenant",
                "--server",
                server.base_url,
                "--customer",
                str(cid),
                "--to",
                "multi_tenant",
            ]
            refused = await asyncio.to_thread(
                subprocess.run, cli, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
            )
            assert refused.returncode == 1 and "gps_positions: 120" in refused.stdout and "--yes" in refused.stderr
            down = await asyncio.to_thread(
                subprocess.run, cli + ["--yes"], env=env, capture_output=True, text=True, timeout=180
            )
            assert down.returncode == 0, down.stdout + down.stderr
            assert "switched: writes paused" in down.stdout
            # stderr is a pipe here: plain progress lines, every table's rows up to its total
            assert "\r" not in down.stderr and "\x1b" not in down.stderr
            assert re.search(r"^copy gps_positions: .*100\.0% of the table\)$", down.stderr, re.M), down.stderr
            assert re.search(r"^copy vehicles: 3/3 rows", down.stderr, re.M), down.stderr
            assert "catching up, verifying and switching" in down.stderr
            await asyncio.sleep(0.5)
            migs = (await client.get(f"/api/v1/customers/{cid}/migrations/{r.json()['id']}")).json()
        stop.touch()
        outputs = await asyncio.gather(*(asyncio.to_thread(sync_peers.rest_of, proc, 150) for _, _, proc in clients))
    finally:
        stop.touch()
        for _, _, proc in clients:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    ends = []
    for (doc, target, proc), (out, err) in zip(clients, outputs):
        assert proc.returncode == 0, err[-4000:]
        end = json.loads([line for line in out.splitlines() if line.strip()][-1])
        assert end["mark"] == "end"
        # connected once and never dropped: no close, no reconnect through both moves
        assert end["connects"] == 1 and end["closed"] is None, end["events"]
        assert not [e for e in end["events"] if "close" in e], end["events"]
        ends.append((doc, target, end))
    # both clients of a doc hold the same state, which is the stored document (in the shared database)
    for doc, target in docs.items():
        a, b = [end for d, _, end in ends if d == doc]
        written = a["maps"]["done"]
        assert written == b["maps"]["done"] and len(written) == 2 and all(n > 100 for n in written.values())
        for _ in range(100):
            stored = await sync_peers.stored_doc(database_url, customer, doc)
            if "map" in target:
                mine, theirs = a["maps"][target["map"]], b["maps"][target["map"]]
                kept = stored.get(target["map"], type=pycrdt.Map).to_py()
            else:
                mine, theirs = a["arrays"][target["array"]], b["arrays"][target["array"]]
                kept = stored.get(target["array"], type=pycrdt.Array).to_py()
            if len(kept) == sum(written.values()) and stored.get("done", type=pycrdt.Map).to_py() == written:
                break
            await asyncio.sleep(0.1)
        assert mine == theirs and len(mine) == sum(written.values())
        assert kept == mine, doc
    # the tracking pipeline materialized every track point exactly once, across both moves
    points = sum(next(end for d, _, end in ends if d == track)["maps"]["done"].values())
    for _ in range(300):
        final = await tenants.snapshot(database_url, cid)
        if final["gps_positions"]["rows"] >= before["gps_positions"]["rows"] - 120 + points:
            break
        await asyncio.sleep(0.1)
    assert final["gps_positions"]["rows"] == before["gps_positions"]["rows"] - 120 + points
    for name in ("vehicles", "geofences", "drivers"):  # (positions_latest and geofence events follow the track)
        assert final[name] == before[name], name
    said = [line for line in down.stdout.splitlines() if line.startswith("switched")]
    total = {doc: sum(end["maps"]["done"].values()) for doc, _, end in ends}
    print(
        f"\nwrite pause: up (REST) {up['pause_ms']:.0f} ms; down (CLI) {said}; JS points written {total}; "
        f"GPS rows materialized from the track meanwhile {points}"
    )
    assert migs["pause_ms"] is not None


def test_a_route_switched_on_one_node_reaches_the_other_nodes(
    server_env, redis_url, pg_admin_url, database_url, tmp_path
):
    env = {
        **server_env,
        "PROVISION_LOCAL_ADMIN_URL": pg_admin_url,
        "MIGRATION_CLEANUP_GRACE_SECONDS": "3600",
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"test-{secrets.token_hex(6)}:",
    }
    nodes = []
    try:
        for i in range(2):
            nodes.append(ServerProcess({**env, "NODE_ID": f"node-{i}"}, log_path=tmp_path / f"node-{i}.log").start())
        asyncio.run(_route_change(*nodes, database_url=database_url))
    finally:
        for node in nodes:
            node.stop()
        for name in asyncio.run(tenants.dedicated_database_names(database_url)):
            asyncio.run(databases.drop_database(pg_admin_url, databases.with_database(pg_admin_url, name)))


async def _route_change(a: ServerProcess, b: ServerProcess, *, database_url: str) -> None:
    cid = await tenants.seed_customer(database_url, slug="twonodes", gps_rows=10)
    op = {"Authorization": f"Bearer {await tenants.operator_token(database_url)}"}
    key = {"Authorization": f"Bearer {await _api_key(database_url, cid, ['fleet:read', 'fleet:write'])}"}

    async def names(node) -> set[str]:
        async with httpx.AsyncClient(base_url=node.base_url, headers=key, timeout=30) as c:
            r = await c.get("/api/v1/vehicles", params={"limit": 100})
            assert r.status_code == 200, r.text
            return {v["name"] for v in r.json()["data"]}

    async def add(node, name) -> None:
        async with httpx.AsyncClient(base_url=node.base_url, headers=key, timeout=30) as c:
            r = await c.post("/api/v1/vehicles", json={"name": name, "vehicle_identifier": name.upper()})
            assert r.status_code == 201, r.text

    async def migrate(to: str) -> dict:
        async with httpx.AsyncClient(base_url=a.base_url, headers=op, timeout=60) as c:
            r = await c.post(f"/api/v1/customers/{cid}/migrations", json={"to": to})
            assert r.status_code == 202, r.text
            mig = await _wait(c, f"/api/v1/customers/{cid}/migrations/{r.json()['id']}", "switched", "cleaned")
            assert mig["status"] in ("switched", "cleaned"), mig.get("error")
            return mig

    async def until_seen(node, name) -> None:  # node b reloads its routes once node a announced the switch
        for _ in range(300):
            if name in await names(node):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{node.base_url} never served {name!r}: its route was not reloaded")

    assert len(await names(b)) == 3  # b has resolved the customer (shared) before the move
    await migrate("single_tenant")
    await add(a, "made-on-a-after-up")  # lands on the dedicated database only
    await until_seen(b, "made-on-a-after-up")
    await add(b, "made-on-b")
    conn = await asyncpg.connect(database_url)
    try:
        dedicated = await conn.fetchval(
            "SELECT database_url FROM deployments WHERE customer_id = $1 "
            "AND status = 'active' AND mode = 'single_tenant'",
            cid,
        )
        assert not await conn.fetchval("SELECT count(*) FROM vehicles WHERE name LIKE 'made-on-%'")
    finally:
        await conn.close()
    dedicated = store.open_database_url(cid, dedicated)  # sealed at rest (storage/sealing.py)
    conn = await asyncpg.connect(dedicated)
    try:
        assert await conn.fetchval("SELECT count(*) FROM vehicles WHERE name LIKE 'made-on-%'") == 2
    finally:
        await conn.close()

    await migrate("multi_tenant")  # and back: the dedicated copy stays (grace period), b must not use it
    await add(a, "made-on-a-after-down")
    await until_seen(b, "made-on-a-after-down")
    assert {"made-on-a-after-up", "made-on-b", "made-on-a-after-down"} <= await names(b)
