"""The client library (clients/js) in headless browsers with real IndexedDB (y-indexeddb), against a
real server, in Chromium (playwright-core; the network really goes) and Firefox ESR (puppeteer-core
over WebDriver BiDi; the page goes offline itself): edits made offline survive a page reload and merge with another device's on
reconnect; the pending count reaches 0 only after the server's DURABLE for them arrived, and at
that instant doc_updates already holds every one of them."""

from __future__ import annotations

import subprocess

import pycrdt

from .support import browsers, fleet, sync_peers

CLIENT_DIR = sync_peers.ROOT / "clients" / "js"


@browsers.each
async def test_offline_edits_survive_a_reload_and_are_pending_until_acknowledged(server, db, database_url, browser):
    env = browsers.env(browser)  # fails the test when the browser is not installed
    cid = await fleet.customer(db, "browser-co")
    customer = sync_peers.Customer(str(cid), "browser-co")
    key = await fleet.api_key(db, cid, permissions=("sync:write",))
    # the page as the library is now (make js builds it too)
    subprocess.run(["npm", "run", "--silent", "build:page"], cwd=CLIENT_DIR, check=True, timeout=120)
    plan = {"server": server.base_url, "customer": customer.slug, "apiKey": key, "browser": browser}
    offline_keys = {f"offline-{i}" for i in range(5)}

    async def at_durable(line: dict) -> bool:
        if line["event"] != "durable":
            return False
        # the page reported durable; the driver is blocked: what is committed right now
        stored = await sync_peers.stored_doc(database_url, customer, "notes")
        assert offline_keys <= set(stored.get("notes", type=pycrdt.Map).keys())
        return True

    run = CLIENT_DIR / "test" / "browser" / "run.mjs"
    lines = await sync_peers.js_checkpoints(run, plan, at_durable, end="done", env=env)
    assert [line["event"] for line in lines] == ["durable", "done"]
    done = lines[-1]
    assert done["errors"] == []
    assert done["firstSync"]["status"] == "durable"
    assert done["offline"]["status"] == "offline" and done["offline"]["pending"] == 5
    # the reload while offline: IndexedDB gave back the edits and their pending count
    assert set(done["reloaded"]["notes"]) == offline_keys
    assert done["reloaded"]["pending"] == 5 and done["reloaded"]["status"] == "offline"
    # merged both ways after reconnecting
    assert set(done["merged"]["notes"]) == offline_keys | {"from-other-device"}
    assert set(done["otherSees"]) == offline_keys | {"from-other-device"}
    # on the reloaded page: pending stayed 5 until a DURABLE frame arrived, then 0
    log = done["merged"]["log"]
    print("reloaded page's log:", log)
    zero = next(i for i, e in enumerate(log) if e.get("pending") == 0 and e.get("status") == "durable")
    assert any(e.get("durableFrame") for e in log[:zero]), log
    assert all(e["pending"] == 5 for e in log[:zero] if "pending" in e), log
