"""client-examples/dashboard in real headless Chromium and Firefox ESR against a real server: a dispatcher sees a
vehicle the tracking side put in the fleet document, sees who else is watching, and a note typed
into the page reaches the durable document."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pycrdt

from .support import browsers

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "client-examples" / "dashboard"
EXE = str(Path(sys.executable).parent / "webhost-sync")


def _onboard(server) -> tuple[str, str]:
    """The operator flow a new customer goes through: returns (customer slug, API key)."""
    env = {
        **os.environ,
        "DATABASE_URL": server.env["DATABASE_URL"],
        "DATA_DIR": server.env["DATA_DIR"],
        "SECRET_KEY": server.env["SECRET_KEY"],
    }  # the same key as the server, as an operator runs it
    subprocess.run(
        [EXE, "create-operator", "--email", "ops@example.com", "--password", "dispatch-pass"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    api = httpx.Client(base_url=server.base_url, timeout=10)
    login = api.post("/api/v1/auth/login", json={"email": "ops@example.com", "password": "dispatch-pass"})
    assert login.status_code == 200, login.text
    created = api.post(
        "/api/v1/customers",
        json={"name": "Acme Freight", "slug": "acme-freight"},
        headers={"Authorization": f"Bearer {login.json()['token']}"},
    )
    assert created.status_code == 201, created.text
    return created.json()["customer"]["slug"], created.json()["api_key"]["key"]


def _live_position_update(vehicle_id: str) -> bytes:
    doc = pycrdt.Doc()
    live = doc.get("live", type=pycrdt.Map)
    live[vehicle_id] = {"name": "Truck 7", "lat": 52.52, "lng": 13.405, "speed": 12.5, "t": "2026-11-22T10:00:00Z"}
    return doc.get_update()


def _open_dashboard(browser: str, page_url: str, *args: str) -> dict:
    result = subprocess.run(
        ["node", "test/browser.mjs", "--url", page_url, *args],
        cwd=DASHBOARD,
        env=browsers.env(browser),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@browsers.each
def test_dispatcher_sees_vehicles_and_shares_notes(server, tmp_path, browser):
    slug, key = _onboard(server)
    auth = {"Authorization": f"Bearer {key}"}
    vehicle = httpx.post(
        server.base_url + "/api/v1/vehicles",
        headers=auth,
        json={"name": "Truck 7", "vehicle_identifier": "T7", "vehicle_type": "truck"},
    ).json()["id"]
    pushed = httpx.post(
        server.base_url + "/api/v1/docs/fleet/updates",
        headers=auth,
        json={"update": base64.b64encode(_live_position_update(vehicle)).decode()},
    )
    assert pushed.status_code == 200, pushed.text
    token = httpx.post(
        server.base_url + "/api/v1/sync-tokens",
        headers=auth,
        json={"docs": ["fleet"], "mode": "rw", "ttl_seconds": 600},
    ).json()["token"]

    page = (DASHBOARD / "index.html").as_uri() + f"?server={server.ws_url}&customer={slug}&token={token}&name=Alice"
    shot = tmp_path / "dashboard.png"
    shown = _open_dashboard(
        browser, page, "--vehicle", vehicle, "--note", "Truck 7 delayed at gate 3", "--screenshot", str(shot)
    )
    assert shown["errors"] == []
    assert shown["status"] == "connected"
    [row] = shown["vehicles"]
    assert row["id"] == vehicle and row["cells"][:3] == ["Truck 7", "52.52000", "13.40500"]
    assert row["cells"][3] == "45"  # 12.5 m/s shown as km/h
    assert shown["mapPoints"] == 1
    assert any("Alice (you)" in d for d in shown["dispatchers"])
    assert shot.stat().st_size > 10_000

    # The note typed into the page is in the server's document, durable and readable over REST.
    content = httpx.get(server.base_url + "/api/v1/docs/fleet?format=json", headers=auth).json()["content"]
    assert [n["text"] for n in content["notes"]] == ["Truck 7 delayed at gate 3"]
    assert content["notes"][0]["by"] == "Alice"

    # A second dispatcher opening the page later sees the first one's note.
    second = _open_dashboard(browser, page.replace("name=Alice", "name=Bob"), "--vehicle", vehicle)
    assert any("Truck 7 delayed at gate 3" in n for n in second["notes"])


def test_dashboard_shows_a_refused_token(server):
    page = (DASHBOARD / "index.html").as_uri() + f"?server={server.ws_url}&customer=nobody&token=not-a-token"
    result = subprocess.run(
        ["node", "-e", BROWSER_REFUSAL, page], cwd=DASHBOARD, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith("refused")


BROWSER_REFUSAL = """
import('playwright-core').then(async ({ chromium }) => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] })
  const page = await browser.newPage()
  await page.goto(process.argv[1])
  await page.waitForSelector('#status[data-state="refused"]', { timeout: 15000 })
  console.log(await page.textContent('#status'))
  await browser.close()
})
"""
