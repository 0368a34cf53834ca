"""Materialization feedback (domain/tracking/feedback.py): in a track room the server publishes its own
awareness state (client id 2^53 - 1) with points materialized, stored, rejected per reason and the
quota, so a phone sees "7 fixes rejected: quota reached" without REST. Real JS y-websocket clients on
two nodes of a quota-limited customer; the state reaches the other node through fan-out, matches
the rows, stays bounded, and outlives y-protocols' 30 s awareness timeout (the server renews it)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import redis.asyncio as aioredis

from sync_server.domain.tracking.quota import QUOTA_EXCEEDED
from sync_server.sync import protocol
from sync_server.sync.rooms import SERVER_AWARENESS_ID

from .conftest import TEST_SECRET
from .support import fleet, sync_peers
from .support.sync_peers import RawPeer
from .test_multinode import cluster, node_env  # noqa: F401  (fixtures: two nodes on one Redis)

LIMIT, PUSHED = 5, 12
DAY = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
START_MS = int(dt.datetime(DAY.year, DAY.month, DAY.day, 8, tzinfo=dt.UTC).timestamp() * 1000)


def _plan(node, customer, doc: str, token: str, **extra) -> str:
    return json.dumps(
        {
            "module": "y-websocket",
            "server": f"{node.ws_url}/sync/{customer.slug}",
            "doc": doc,
            "params": {"token": token},
            "array": "points",
            "until": {"rejected": QUOTA_EXCEEDED, "count": PUSHED - LIMIT},
            "timeoutMs": 90000,
            **extra,
        }
    )


async def test_phones_on_both_nodes_see_quota_rejections(cluster, db, node_env):  # noqa: F811
    nodes = cluster.start(2)
    plan = await fleet.plan(db, "tiny", points_per_day=LIMIT)
    cid = await fleet.customer(db, "quota-fleet", plan=plan)
    customer = sync_peers.Customer(str(cid), "quota-fleet")
    vid = await fleet.vehicle(db, cid, "van-1")
    doc = f"tracks/{vid}/{DAY.isoformat()}"
    token = sync_peers.token(TEST_SECRET, customer, docs=["tracks/*"])
    point = {"t": START_MS, "lat": 52.5, "lng": 13.4, "accuracy": 5}

    # the watcher on node 1 waits past y-protocols' outdatedTimeout (30 s): the state must stay
    watcher = asyncio.to_thread(sync_peers.js, "stock.mjs", _plan(nodes[1], customer, doc, token, waitMs=33000))
    phone = asyncio.to_thread(
        sync_peers.js, "stock.mjs", _plan(nodes[0], customer, doc, token, push=PUSHED, point=point)
    )
    seen_by_phone, seen_by_watcher = await asyncio.gather(phone, watcher)

    rows = await fleet.count(db, cid, "SELECT count(*) FROM gps_positions")
    assert rows == LIMIT
    for out in (seen_by_phone, seen_by_watcher):
        state = out["serverState"]
        assert state["webhost"] == "materialization" and state["v"] == 1 and state["doc"] == doc
        assert state["materialized"] == PUSHED and state["stored"] == LIMIT
        assert state["rejected"] == {QUOTA_EXCEEDED: PUSHED - LIMIT}
        assert state["quota"] == {"day": DAY.isoformat(), "limit": LIMIT, "used": LIMIT, "reached": True}
        assert len(json.dumps(state)) < 2048
    assert seen_by_watcher["serverRemoved"] == []  # renewed: never timed out at the client

    # fan-out carried node 0's state to node 1 (the Redis stream of the doc holds it)
    client = aioredis.from_url(node_env["REDIS_URL"])
    try:
        entries = await client.xrange(f"{node_env['REDIS_PREFIX']}doc:{cid}:{doc}", "-", "+")
    finally:
        await client.aclose()
    published = {
        fields[b"n"].decode()
        for _id, fields in entries
        if fields.get(b"k") == b"a" and b'"materialization"' in fields.get(b"d", b"")
    }
    assert "node-0" in published, published

    # a peer cannot speak for the server: its awareness entry with the reserved id is dropped
    spoof = await RawPeer.connect(f"{nodes[1].ws_url}/sync/{customer.slug}/{doc}?token={token}")
    listener = await RawPeer.connect(f"{nodes[1].ws_url}/sync/{customer.slug}/{doc}?token={token}")
    await spoof.sync()
    await listener.sync()
    await spoof.send(protocol.awareness_frame([(SERVER_AWARENESS_ID, 2**52, '{"webhost":"spoof"}'), (7, 1, "{}")]))
    for _ in range(10):
        await listener.recv()
        if 7 in listener.awareness:
            break
    assert listener.awareness.get(SERVER_AWARENESS_ID, "").find("spoof") < 0
    await spoof.close()
    await listener.close()
