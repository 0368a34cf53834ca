"""The dispatcher web app (/app/) in real headless Chromium and Firefox ESR (tests/support/browsers.py)
against a real server, no map tiles (MAP_TILE_URL=none: markers, trails and geofences on a plain
background). webapp/test/scenario.mjs drives four browsers (two dispatchers, a viewer, another
customer's dispatcher) and a tracker (yjs + y-websocket in Node); this test sets the customers up
through REST and checks what the browsers saw. Screenshots are kept in var/test-artifacts/webapp/<browser>/ (printed)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .support import browsers
from .support.server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
WEBAPP = ROOT / "webapp"
EXE = str(Path(sys.executable).parent / "webhost-sync")
PASSWORD = "dispatch pass 1"

pytestmark = [pytest.mark.browser, pytest.mark.js, pytest.mark.slow]


def _operator_token(server) -> str:
    env = {**os.environ, **{k: server.env[k] for k in ("DATABASE_URL", "DATA_DIR", "SECRET_KEY")}}
    subprocess.run(
        [EXE, "create-operator", "--email", "ops@example.com", "--password", "ops-password"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    r = httpx.post(
        f"{server.base_url}/api/v1/auth/login", json={"email": "ops@example.com", "password": "ops-password"}
    )
    assert r.status_code == 200, r.text
    return r.json()["token"]


def _customer(server, operator: str, slug: str) -> httpx.Client:
    r = httpx.post(
        f"{server.base_url}/api/v1/customers",
        json={"name": slug.title(), "slug": slug},
        headers={"Authorization": f"Bearer {operator}"},
    )
    assert r.status_code == 201, r.text
    key = r.json()["api_key"]["key"]
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def _user(client: httpx.Client, email: str, role: str) -> dict:
    r = client.post(
        "/api/v1/users", json={"email": email, "name": email.split("@")[0], "role": role, "password": PASSWORD}
    )
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def app_server(server_env, tmp_path):
    proc = ServerProcess({**server_env, "MAP_TILE_URL": "none"}, log_path=tmp_path / "server.log").start()
    yield proc
    proc.stop()


@browsers.each
def test_dispatchers_share_the_live_map_geofences_events_and_dispatch_work(app_server, browser):
    server = app_server
    operator = _operator_token(server)
    acme = _customer(server, operator, "acme-freight")
    other = _customer(server, operator, "other-co")
    users = {
        "alice": _user(acme, "alice@acme.example", "admin"),
        "bob": _user(acme, "bob@acme.example", "member"),
        "vic": _user(acme, "vic@acme.example", "viewer"),
    }
    _user(other, "eve@other.example", "admin")
    vehicle = acme.post("/api/v1/vehicles", json={"name": "van-7", "vehicle_identifier": "van-7"}).json()["id"]
    tracker = acme.post("/api/v1/sync-tokens", json={"docs": [f"tracks/{vehicle}/*"], "mode": "rw"}).json()["token"]
    shots = ROOT / "var" / "test-artifacts" / "webapp" / browser  # kept after the run (pytest's tmp dirs rotate)
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    config = {
        "base": server.base_url,
        "ws": server.ws_url,
        "slug": "acme-freight",
        "users": {name: {"email": u["email"]} for name, u in users.items()},
        "password": PASSWORD,
        "other": {"slug": "other-co", "email": "eve@other.example"},
        "vehicle": vehicle,
        "trackerToken": tracker,
        "day": dt.datetime.fromtimestamp(time.time() - 150, dt.UTC).date().isoformat(),
        "shots": str(shots),
    }
    seen = browsers.run_script(WEBAPP / "test" / "scenario.mjs", config, browser, timeout=200, server=server)

    # the marker moved on both screens (the tracker's 5th, then 10th fix), live
    assert seen["marker"]["first"] == [13.4 + 4 * 0.0002] * 2
    assert seen["marker"]["moved"] == [13.4 + 9 * 0.0002] * 2
    assert seen["vehicleRowStatus"] == "live"
    assert any("alice" in p and "looking at van-7" in p for p in seen["presenceOnBob"])
    # alice drew it by clicking the map; bob's screen got it without reloading
    [fence] = seen["fenceSeenByBob"]
    assert fence["name"] == "Depot" and fence["kind"] == "circle" and fence["radius"] == 200
    assert abs(fence["center"]["lat"] - 52.5) < 0.001 and abs(fence["center"]["lng"] - 13.41) < 0.001
    # the crossing reached both feeds
    assert seen["feed"]["alice"].endswith("van-7 entered Depot") and seen["feed"]["bob"].endswith("van-7 entered Depot")
    assert "Pick up pallets" in seen["taskOnAlice"] and "Dana" in seen["taskOnAlice"]
    # offline with a pending edit, merged after reconnecting
    assert seen["pendingText"].startswith("1 edit kept on this device")
    assert not any("Call driver 7" in n for n in seen["aliceBefore"]) and seen["bobPendingAfter"] is False
    alice_sees, bob_sees = seen["presenceAfterReconnect"]  # presence came back both ways
    assert "bob" in alice_sees and "alice" in bob_sees
    # an edit the app before the client library left unsynced in its own store was adopted and synced
    assert seen["earlierNoteOnAlice"] == "Left in the earlier store"
    # history: the stored trail with its enter event
    history = seen["history"]
    assert history["max"] >= 50 and history["value"] == 5 and "fixes, 1 geofence events" in history["info"]
    assert any("enter" in e and "Depot" in e for e in history["events"])
    assert history["markerLng"] == 13.4 + 5 * 0.0002  # the playback marker is at the slider's fix
    # bob's radius edit reached alice, alice's clicked polygon reached bob (closed ring of 3 corners)
    assert seen["shapesOnBob"] == [
        {"name": "Depot", "kind": "circle", "radius": 250, "corners": None},
        {"name": "Yard", "kind": "polygon", "radius": None, "corners": 4},
    ]
    # a viewer: no edit controls, REST refuses its writes, its sync writes go nowhere
    assert seen["viewerUi"] == {"noteFormVisible": False, "drawVisible": False, "editButtonsDisabled": True}
    assert seen["viewerRest"] == {"geofence": 403, "rwToken": 403}
    assert seen["viewerNoteReachedAlice"] is False
    # another customer's dispatcher: nothing of acme's, and its token opens nothing of acme's
    assert seen["otherSees"] == {"markers": 0, "vehicles": 0, "events": 0, "geofences": 0, "notes": 0, "tasks": 0}
    assert seen["otherTokenOnFirstCustomer"] == 4403
    # signed out: no token, and the page's last token is refused at once (the session ended)
    assert seen["afterSignOut"] == {
        "tokenStatus": 401,
        "oldTokenClose": 4401,  # a new connection with the session's token
        "heldClose": 4401,  # a connection open at sign-out, closed by the server
        "syncing": False,
        "signInShown": True,
    }
    assert seen["signOutNote"] == "Signed out."  # not "session ended": the page's own sockets closing did not count
    assert seen["errors"] == []
    assert len(list(shots.glob("*.png"))) == 11
