"""The pycrdt client example (client-examples/python) against a real server, with a real JS peer."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from .conftest import TEST_SECRET
from .support import sync_peers
from .support.sync_peers import ROOT, js


def python_client(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "client-examples" / "python" / "sync_client.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


async def test_python_and_js_clients_see_each_others_edits(server, database_url):
    customer = await sync_peers.create_customer(database_url)
    tok = sync_peers.token(TEST_SECRET, customer)
    doc_url = f"{server.ws_url}/sync/{customer.slug}/fleet"
    out = await asyncio.to_thread(
        python_client, "--url", doc_url, "--token", tok, "--set", 'from_py={"n": 1}', "--push", '"p1"', "--push", '"p2"'
    )
    assert out == {"m": {"from_py": {"n": 1.0}}, "a": ["p1", "p2"]}
    seen = await asyncio.to_thread(
        js,
        "peer.mjs",
        json.dumps(
            {
                "server": f"{server.ws_url}/sync/{customer.slug}",
                "doc": "fleet",
                "token": tok,
                "read": {"maps": ["m"], "arrays": ["a"]},
                "steps": [
                    {"op": "synced"},
                    {"op": "set", "map": "m", "key": "from_js", "value": True},
                    {"op": "flush"},
                ],
            }
        ),
    )
    assert seen["maps"]["m"]["from_py"] == {"n": 1} and seen["arrays"]["a"] == ["p1", "p2"]
    key = await sync_peers.create_api_key(database_url, customer, ["sync:read"])
    back = await asyncio.to_thread(python_client, "--url", doc_url, "--api-key", key, "--wait-key", "from_js")
    assert back["m"] == {"from_py": {"n": 1.0}, "from_js": True}
