"""The pycrdt client example (client-examples/python) against a real server, with a real JS peer."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

from .conftest import TEST_SECRET
from .support import sync_peers
from .support.server import ServerProcess
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


async def test_python_client_reports_a_1001_close_in_one_line(server_env, database_url, tmp_path):
    """The server going away (SIGTERM: 1001) while the example waits: one line naming the close, exit
    status 1, at once, no traceback (it used to wait out --timeout and print one)."""
    proc = ServerProcess(server_env, log_path=tmp_path / "server.log").start()
    try:
        customer = await sync_peers.create_customer(database_url)
        url = f"{proc.ws_url}/sync/{customer.slug}/fleet"
        script = str(ROOT / "client-examples" / "python" / "sync_client.py")
        client = subprocess.Popen(
            [sys.executable, script, "--url", url, "--token", sync_peers.token(TEST_SECRET, customer)]
            + ["--wait-key", "never", "--timeout", "90"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while "sync_connected" not in proc.log_text() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert "sync_connected" in proc.log_text(), proc.log_text()[-2000:]
        started = time.monotonic()
        proc.stop(signal.SIGTERM)
        out, err = await asyncio.to_thread(client.communicate, timeout=60)
    finally:
        proc.stop()
    assert client.returncode == 1 and out == ""
    assert time.monotonic() - started < 20, "the client waited for its timeout"
    assert err.splitlines() == [
        "sync_client.py: server closed the connection (1001 server shutting down) while waiting for key 'never'"
    ], err


def test_python_client_without_its_libraries_says_how_to_run_it(tmp_path):
    """Run with a Python that lacks pycrdt (the system one, outside the virtualenv): one line on how
    to run it, no ModuleNotFoundError traceback."""
    isolated = subprocess.run(
        [sys.executable, "-S", "-s", str(ROOT / "client-examples" / "python" / "sync_client.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert isolated.returncode == 1 and "Traceback" not in isolated.stderr, isolated.stderr
    assert ".venv/bin/python client-examples/python/sync_client.py" in isolated.stderr
