"""The operator console (/admin/) in real headless Chromium and Firefox ESR (tests/support/browsers.py)
against a real server with Redis (node heartbeats) and provisioning on the local PostgreSQL server:
webapp/test/console.mjs drives an admin, a staff operator and a customer user; this test sets them up
and checks what the browsers saw and what the databases hold afterwards. Screenshots are kept in
var/test-artifacts/console/<browser>/."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from .support import browsers, databases, tenants
from .support.server import ServerProcess
from .test_provisioning_api import _api_key

ROOT = Path(__file__).resolve().parents[1]
WEBAPP = ROOT / "webapp"
EXE = str(Path(sys.executable).parent / "webhost-sync")
OPERATOR_PASSWORD = "console password 1"
USER_PASSWORD = "dispatch pass 1"
GPS_ROWS = 20_000

pytestmark = [pytest.mark.browser, pytest.mark.js, pytest.mark.slow]


@pytest.fixture
def console_server(server_env, tmp_path, pg_admin_url, database_url, redis_url):
    env = {
        **server_env,
        "MAP_TILE_URL": "none",
        "PROVISION_LOCAL_ADMIN_URL": pg_admin_url,
        "MIGRATION_CLEANUP_GRACE_SECONDS": "3600",  # the shared copy stays: the test compares both sides
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"console-{secrets.token_hex(4)}:",
        "NODE_HEARTBEAT_SECONDS": "1",
    }
    proc = ServerProcess(env, log_path=tmp_path / "server.log").start()
    yield proc
    proc.stop()
    for name in asyncio.run(tenants.dedicated_database_names(database_url)):
        asyncio.run(databases.drop_database(pg_admin_url, databases.with_database(pg_admin_url, name)))


def _operator(server, email: str, role: str) -> None:
    env = {**os.environ, **{k: server.env[k] for k in ("DATABASE_URL", "DATA_DIR", "SECRET_KEY")}}
    subprocess.run(
        [EXE, "create-operator", "--email", email, "--password", OPERATOR_PASSWORD, "--role", role],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


async def _gps_count(url: str, cid) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT count(*) FROM gps_positions WHERE customer_id = $1", cid)
    finally:
        await conn.close()


@browsers.each
def test_operators_run_customers_and_migrations_from_the_console_and_customers_cannot(
    console_server, database_url, browser
):
    server = console_server
    _operator(server, "admin@ops.example.com", "admin")
    _operator(server, "staff@ops.example.com", "staff")
    cid = asyncio.run(tenants.seed_customer(database_url, slug="acme-freight", gps_rows=GPS_ROWS, plan="hobby"))
    admin_key = asyncio.run(_api_key(database_url, cid, permissions=("admin",)))
    asyncio.run(_api_key(database_url, cid, permissions=("fleet:read",)))
    customer = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
    r = customer.post("/api/v1/users", json={"email": "dana@acme.example", "role": "admin", "password": USER_PASSWORD})
    assert r.status_code == 201, r.text
    r = customer.post("/api/v1/sync-tokens", json={"docs": ["fleet"], "mode": "rw"})
    assert r.status_code == 200, r.text
    sync_token = r.json()["token"]
    for slug in ("beta-logistics", "gamma-cargo"):
        op_token = asyncio.run(tenants.operator_token(database_url))
        r = httpx.post(
            f"{server.base_url}/api/v1/customers",
            json={"slug": slug, "name": slug.replace("-", " ").title()},
            headers={"Authorization": f"Bearer {op_token}"},
        )
        assert r.status_code == 201, r.text
    shots = ROOT / "var" / "test-artifacts" / "console" / browser  # kept after the run (pytest's tmp dirs rotate)
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    config = {
        "base": server.base_url,
        "ws": server.ws_url,
        "syncToken": sync_token,
        "admin": "admin@ops.example.com",
        "staff": "staff@ops.example.com",
        "password": OPERATOR_PASSWORD,
        "customer": {"id": str(cid), "slug": "acme-freight", "key": admin_key},
        "user": {"email": "dana@acme.example", "password": USER_PASSWORD},
        "shots": str(shots),
    }
    seen = browsers.run_script(WEBAPP / "test" / "console.mjs", config, browser, timeout=240, server=server)

    # a customer user (its dispatcher-app session) and its API key cannot open the console
    assert seen["customerUser"] == {"signInShown": True, "consoleHidden": True, "customers": 401, "session": 401}
    assert seen["customerKey"] == {"customers": 401, "nodes": 401}
    # the admin found the customer by searching, with its usage against the hobby plan as bars
    assert seen["found"] == ["acme-freight"]
    bars = seen["usageBefore"]
    assert bars["Vehicles"]["now"] == 3 and bars["Geofences"]["now"] == 2
    assert bars["Vehicles"]["max"] == seen["limits"]["hobby"]["vehicle_limit"]
    # changed the plan: the bars' limits are the new plan's
    assert seen["planResult"] == "Plan changed to business."
    assert seen["usageAfter"]["Vehicles"]["max"] == seen["limits"]["business"]["vehicle_limit"]
    assert seen["usageAfter"]["Vehicles"]["now"] == 3
    # the customer's open sync socket, against the new plan's connection limit
    assert seen["usageAfter"]["Open connections"] == {
        "now": 1,
        "max": seen["limits"]["business"]["connection_limit"],
    }
    # started a migration to a dedicated database and watched it run to the end
    migration = seen["migration"]
    assert migration["final"] in ("switched", "cleaned"), migration
    assert "running" in migration["statuses"]
    assert migration["percents"][-1] == 100 and migration["percents"] == sorted(migration["percents"])
    copied = re.match(r"Done: ([\d,]+) rows copied", migration["detail"])
    assert copied and int(copied.group(1).replace(",", "")) > GPS_ROWS, migration["detail"]  # GPS rows and the rest
    assert migration["mode"].startswith("Dedicated database")
    # the infrastructure tab: this node from its Redis heartbeat, the migration's events, health
    infra = seen["infrastructure"]
    assert infra["nodesSource"] == "(live heartbeats)" and len(infra["nodes"]) >= 1
    [this] = [n for n in infra["nodes"] if n["thisNode"]]
    assert this["connections"] >= 1 and this["rooms"] >= 1  # the customer's open sync socket
    assert "migration_copy" in infra["eventSteps"] and "migration_switch" in infra["eventSteps"]
    assert infra["health"] in ("ok", "degraded")
    # staff: no delete buttons to press, and the server refuses the deletes anyway
    staff = seen["staff"]
    assert staff["deleteDisabled"] is True and staff["revokeDisabled"] is True
    assert staff["deleteStatus"] == 403 and staff["revokeStatus"] == 403 and staff["migrateStatus"] == 403
    assert staff["stillListed"] is True
    assert not seen["errors"], seen["errors"]

    # what the databases say: routed to the dedicated database, every GPS row there
    conn_mode = httpx.get(
        f"{server.base_url}/api/v1/customers/{cid}",
        headers={"Authorization": f"Bearer {asyncio.run(tenants.operator_token(database_url))}"},
    ).json()["deployment_mode"]
    assert conn_mode == "single_tenant"
    [name] = asyncio.run(tenants.dedicated_database_names(database_url))
    dedicated = databases.with_database(database_url, name)
    assert asyncio.run(_gps_count(dedicated, cid)) == GPS_ROWS
    # and the customer is still served (through its key) after the move
    assert customer.get("/api/v1/vehicles").status_code == 200
