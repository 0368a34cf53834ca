"""Behaviour with the real JS client (npm yjs + y-websocket via client-examples/js), a real server
process and real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from .conftest import TEST_SECRET
from .support import sync_peers
from .support.server import ServerProcess
from .support.sync_peers import js, js_start


@pytest.fixture
async def customer(database_url):
    return await sync_peers.create_customer(database_url)


def plan(server, customer, doc="fleet", steps=(), mode="rw", token=None, **extra) -> str:
    return json.dumps(
        {
            "server": f"{server.ws_url}/sync/{customer.slug}",
            "doc": doc,
            "token": token if token is not None else sync_peers.token(TEST_SECRET, customer, mode=mode),
            "read": {"maps": ["m"], "arrays": ["a"], "texts": ["t"]},
            "steps": list(steps),
            **extra,
        }
    )


async def run_js(*args, **kwargs) -> dict:
    return await asyncio.to_thread(js, *args, **kwargs)


async def wait_stored(database_url, customer, doc, check, timeout=60.0):
    """Poll PostgreSQL until `check(stored pycrdt doc)` holds (durability is asynchronous by design:
    the group commit lands within its window)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        started = loop.time()
        ydoc = await sync_peers.stored_doc(database_url, customer, doc)
        if check(ydoc):
            return ydoc
        if loop.time() > deadline:
            raise AssertionError(f"stored doc {doc} never satisfied the check")
        # a replay of a big log costs seconds on a loaded machine: poll no more often than it takes,
        # so the polling itself does not starve the server's group commit and compaction
        await asyncio.sleep(max(0.1, loop.time() - started))


async def test_two_clients_converge_on_map_array_and_text_and_late_joiner_gets_everything(server, customer):
    a_steps = [
        {"op": "synced"},
        {"op": "set", "map": "m", "key": "a", "value": 1},
        {"op": "push", "array": "a", "values": ["from-a"]},
        {"op": "insert", "text": "t", "index": 0, "value": "hello "},
        {"op": "waitKey", "map": "m", "key": "b"},
        {"op": "waitText", "text": "t", "contains": "world"},
        {"op": "set", "map": "m", "key": "a-done", "value": True},
        {"op": "waitKey", "map": "m", "key": "b-done"},
    ]
    b_steps = [
        {"op": "synced"},
        {"op": "set", "map": "m", "key": "b", "value": {"nested": [1, 2]}},
        {"op": "push", "array": "a", "values": ["from-b"]},
        {"op": "insert", "text": "t", "value": "world"},
        {"op": "waitKey", "map": "m", "key": "a"},
        {"op": "waitText", "text": "t", "contains": "hello"},
        {"op": "set", "map": "m", "key": "b-done", "value": True},
        {"op": "waitKey", "map": "m", "key": "a-done"},
    ]
    a, b = await asyncio.gather(
        run_js("peer.mjs", plan(server, customer, steps=a_steps)),
        run_js("peer.mjs", plan(server, customer, steps=b_steps)),
    )
    assert a["maps"] == b["maps"]
    assert a["maps"]["m"]["b"] == {"nested": [1, 2]}
    assert sorted(a["arrays"]["a"]) == ["from-a", "from-b"] and a["arrays"] == b["arrays"]
    assert a["texts"] == b["texts"] and "hello" in a["texts"]["t"] and "world" in a["texts"]["t"]
    late = await run_js("peer.mjs", plan(server, customer, steps=[{"op": "synced"}]))
    assert (late["maps"], late["arrays"], late["texts"]) == (a["maps"], a["arrays"], a["texts"])


async def test_offline_edits_on_two_phones_merge_after_reconnect(server, customer):
    tok = sync_peers.token(TEST_SECRET, customer, docs=["tracks/*"])
    base = [
        "--server",
        f"{server.ws_url}/sync/{customer.slug}",
        "--token",
        tok,
        "--vehicle",
        "v7",
        "--day",
        "2025-01-31",
        "--expect-notes",
        "2",
        "--offline-ms",
        "800",
    ]
    one, two = await asyncio.gather(
        run_js("mobile.mjs", *base, "--name", "phone-1", "--points", "30", "--seed", "0"),
        run_js("mobile.mjs", *base, "--name", "phone-2", "--points", "25", "--seed", "7"),
    )
    assert one["points"] == two["points"] == 55
    assert sorted(one["ts"]) == sorted(two["ts"])
    assert one["notes"] == two["notes"] and set(one["notes"]) == {"phone-1", "phone-2"}


async def test_server_restart_loses_no_update_and_duplicates_nothing(server_env, customer, database_url, tmp_path):
    srv = ServerProcess(server_env, log_path=tmp_path / "s1.log").start()
    try:
        # A writes and stays connected across the restart (it reconnects on its own).
        writer = js_start(
            "peer.mjs",
            plan(
                srv,
                customer,
                steps=[
                    {"op": "synced"},
                    {"op": "insert", "text": "t", "value": "hello"},
                    {"op": "pushMany", "array": "a", "count": 200},
                    {"op": "flush"},
                    {"op": "print", "mark": "written"},
                    {"op": "waitReconnect"},
                    {"op": "insert", "text": "t", "value": " again"},
                    {"op": "flush"},
                    {"op": "sleep", "ms": 200},
                ],
            ),
        )
        assert (await asyncio.to_thread(sync_peers.next_line, writer))["mark"] == "written"
        srv.stop()  # SIGTERM: flush, close 1001
        srv = ServerProcess(server_env, log_path=tmp_path / "s2.log", port=srv.port).start()
        out, err = await asyncio.to_thread(sync_peers.rest_of, writer, 120)
        assert writer.returncode == 0, err
        end = json.loads(out.strip().splitlines()[-1])
        assert end["texts"]["t"] == "hello again" and end["arrayLengths"]["a"] == 200
        reader = await run_js("peer.mjs", plan(srv, customer, steps=[{"op": "synced"}]))
        assert reader["texts"]["t"] == "hello again"
        assert reader["arrays"]["a"] == list(range(200))
    finally:
        srv.stop()
    stored = await sync_peers.stored_doc(database_url, customer, "fleet")
    assert str(stored.get("t", type=__import__("pycrdt").Text)) == "hello again"


async def test_awareness_reaches_new_joiner_at_once_and_killed_client_presence_is_removed(server, customer):
    holder = js_start(
        "peer.mjs",
        plan(
            server,
            customer,
            steps=[
                {"op": "synced"},
                {"op": "awareness", "state": {"user": "holder"}},
                {"op": "flush"},
                {"op": "print", "mark": "present"},
                {"op": "sleep", "ms": 600000},
            ],
        ),
    )
    try:
        assert (await asyncio.to_thread(sync_peers.next_line, holder))["mark"] == "present"
        watcher = js_start(
            "peer.mjs",
            plan(
                server,
                customer,
                steps=[
                    {"op": "synced"},
                    {"op": "print", "mark": "joined"},
                    {"op": "awareness", "state": {"user": "watcher"}},
                    {"op": "waitPresence", "count": 1},
                    {"op": "print", "mark": "ready"},
                    {"op": "waitPresenceAtMost", "count": 0},
                ],
            ),
        )
        joined = await asyncio.to_thread(sync_peers.next_line, watcher)
        # The holder's presence came with the initial sync, not with its next 15 s renewal.
        assert [p["state"] for p in joined["presence"]] == [{"user": "holder"}]
        ready = await asyncio.to_thread(sync_peers.next_line, watcher)
        assert ready["mark"] == "ready"
        holder.send_signal(signal.SIGKILL)  # no goodbye: the TCP connection just drops
        out, err = await asyncio.to_thread(sync_peers.rest_of, watcher, 60)
        assert watcher.returncode == 0, err
        end = json.loads(out.strip().splitlines()[-1])
        removal = [e for e in end["events"] if "presenceRemoved" in e]
        # Removed by the server's broadcast, not by the client's own 30 s outdated timeout.
        assert removal and removal[0]["origin"] == "remote"
    finally:
        holder.kill()


async def test_bad_token_is_refused_4401_and_the_client_stops(server, customer):
    out = await run_js(
        "peer.mjs",
        plan(server, customer, token="wst1.bogus.token", steps=[{"op": "waitClosed"}, {"op": "sleep", "ms": 1500}]),
    )
    assert out["closed"]["code"] == 4401
    assert out["connects"] == 1, out["events"]  # no reconnect loop
    assert [e.get("close") for e in out["events"] if "close" in e] == [4401]
    assert server.log_text().count('"sync_refused"') == 1


async def test_read_only_token_cannot_change_the_document(server, customer, database_url):
    await run_js(
        "peer.mjs",
        plan(
            server,
            customer,
            steps=[{"op": "synced"}, {"op": "set", "map": "m", "key": "owner", "value": "rw"}, {"op": "flush"}],
        ),
    )
    ro = await run_js(
        "peer.mjs",
        plan(
            server,
            customer,
            mode="r",
            steps=[
                {"op": "synced"},
                {"op": "set", "map": "m", "key": "intruder", "value": "r"},
                {"op": "flush"},
                {"op": "sleep", "ms": 300},
            ],
        ),
    )
    assert ro["maps"]["m"]["owner"] == "rw"  # it reads
    fresh = await run_js("peer.mjs", plan(server, customer, steps=[{"op": "synced"}]))
    assert fresh["maps"]["m"] == {"owner": "rw"}
    stored = await sync_peers.stored_doc(database_url, customer, "fleet")
    assert stored.get("m", type=__import__("pycrdt").Map).to_py() == {"owner": "rw"}


async def test_3000_updates_right_before_the_last_client_leaves_are_all_stored(server, customer, database_url):
    await run_js(
        "peer.mjs",
        plan(
            server, customer, doc="burst3k", steps=[{"op": "synced"}, {"op": "pushMany", "array": "a", "count": 3000}]
        ),
    )
    import pycrdt

    await wait_stored(database_url, customer, "burst3k", lambda d: len(d.get("a", type=pycrdt.Array)) == 3000)


@pytest.mark.timeout(900)  # 150,000 updates through a real JS client, a loaded machine: minutes
async def test_burst_of_150000_updates_loses_none(server, customer, database_url):
    out = await run_js(
        "peer.mjs",
        plan(
            server,
            customer,
            doc="burst150k",
            read={"maps": ["m"], "lengthsOnly": True},
            steps=[{"op": "synced"}, {"op": "setMany", "map": "m", "count": 150000}, {"op": "flush"}],
        ),
        timeout=600,
    )
    assert out["mapSizes"]["m"] == 150000
    import pycrdt

    stored = await wait_stored(
        database_url, customer, "burst150k", lambda d: len(d.get("m", type=pycrdt.Map)) == 150000, timeout=600
    )
    assert stored.get("m", type=pycrdt.Map)["k149999"] == 149999


async def test_twenty_clients_opening_a_new_room_at_once_all_sync(server, customer):
    tok = sync_peers.token(TEST_SECRET, customer)
    out = await run_js("crowd.mjs", f"{server.ws_url}/sync/{customer.slug}", "crowd", tok, "20")
    everybody = sorted(f"p{i}" for i in range(20))
    assert out["views"] == [everybody] * 20
    assert server.log_text().count('"room_loaded"') == 1  # loaded once, not 20 times


def test_a_client_that_dies_fails_the_wait_at_once_with_its_stderr():
    """tests/support/sync_peers.next_line: a started client that exits before its next line (as
    without node_modules) fails the test with its exit code and stderr, instead of a JSON error."""
    import subprocess

    dead = subprocess.Popen(
        ["node", "-e", "console.error('cannot start: no node_modules'); process.exit(3)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with pytest.raises(AssertionError) as failed:
        sync_peers.next_line(dead, timeout=30)
    assert "client exited 3" in str(failed.value) and "cannot start: no node_modules" in str(failed.value)
