"""Live sockets follow their credentials (issue 15, item 5): a token's expiry, a revoked API key and a
deleted vehicle close open sockets on every node within a few seconds; the in-band refresh
(sync/control.py) keeps a socket past its first token's expiry. Real server processes, real Redis,
real JS y-websocket clients (the API-key and refresh sockets are Python websocket clients: the
stock JS client sets neither headers nor our message)."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import httpx
import pycrdt
import pytest
import redis.asyncio as aioredis

from sync_server.domain.accounts import api_keys
from sync_server.sync import control, protocol

from .conftest import TEST_SECRET
from .rest.conftest import OPERATOR_PASSWORD
from .rest.test_fleet import _create_operator
from .support import fleet, sync_peers
from .support.sync_peers import RawPeer, js_start
from .test_multinode import cluster, node_env  # noqa: F401  (fixtures: two nodes on one Redis)

BOUND = 3.0  # seconds: a change reaches every node's sockets within this


def _peer(node, customer, doc: str, token: str) -> object:
    """A JS y-websocket 3.x client that syncs and then waits until the server closes it for good."""
    plan = {
        "server": f"{node.ws_url}/sync/{customer.slug}",
        "doc": doc,
        "token": token,
        "steps": [{"op": "synced"}, {"op": "print", "mark": "synced"}, {"op": "waitClosed"}],
        "timeoutMs": 60000,
    }
    return js_start("peer.mjs", json.dumps(plan))


async def _synced(proc) -> None:
    while True:
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line, proc.stderr.read()[-3000:]
        if json.loads(line).get("mark") == "synced":
            return


async def _closed(proc) -> tuple[dict, float]:
    """The client's terminal close and when its process saw it end (epoch seconds)."""
    out, err = await asyncio.to_thread(sync_peers.rest_of, proc, 60)
    ended = time.time()
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])["closed"], ended


async def test_token_expiry_closes_js_clients_on_two_nodes(cluster, database_url):  # noqa: F811
    nodes = cluster.start(2)
    customer = await sync_peers.create_customer(database_url)
    ttl = 4
    expires_at = time.time() + ttl
    token = sync_peers.token(TEST_SECRET, customer, ttl=ttl)
    long_token = sync_peers.token(TEST_SECRET, customer, ttl=3600)
    peers = [_peer(node, customer, "fleet", token) for node in nodes]
    for proc in peers:
        await _synced(proc)
    survivor = await RawPeer.connect(f"{nodes[1].ws_url}/sync/{customer.slug}/fleet?token={long_token}")
    await survivor.sync()
    for proc in peers:
        closed, ended = await _closed(proc)
        assert closed == {"code": 4401, "reason": "token expired"}
        assert expires_at - 1 <= ended <= expires_at + BOUND  # at the expiry, not before (1 s: exp is whole seconds)
        print(f"token expiry: client saw the close {ended - expires_at:+.2f} s after the expiry")
    await survivor.send(bytes((protocol.QUERY_AWARENESS,)))
    await survivor.recv()  # the socket of a token that did not expire is still served
    await survivor.close()


async def test_revoked_key_and_deleted_vehicle_close_sockets_on_every_node(cluster, database_url, db):  # noqa: F811
    nodes = cluster.start(2)
    slug = "revoker"
    cid = await fleet.customer(db, slug)
    customer = sync_peers.Customer(str(cid), slug)
    admin = await fleet.api_key(db, cid, ("admin",))
    async with httpx.AsyncClient(base_url=nodes[0].base_url, timeout=30) as http:
        auth = {"Authorization": f"Bearer {admin}"}
        r = await http.post("/api/v1/api-keys", headers=auth, json={"name": "sync", "permissions": ["sync:write"]})
        assert r.status_code == 201, r.text
        sync_key = r.json()
        r = await http.post("/api/v1/vehicles", headers=auth, json={"name": "Van", "vehicle_identifier": "van-9"})
        assert r.status_code == 201, r.text
        vehicle = r.json()["id"]

        # A revoked key: its sockets on both nodes close (4401); a token socket of the customer stays.
        keyed = []
        for node in nodes:
            peer = await RawPeer.connect(
                f"{node.ws_url}/sync/{slug}/fleet",
                additional_headers={"Authorization": f"Bearer {sync_key['key']}"},
            )
            await peer.sync()
            keyed.append(peer)
        token = sync_peers.token(TEST_SECRET, customer, docs=[f"tracks/{vehicle}/*", "fleet"])
        tracks = [_peer(node, customer, f"tracks/{vehicle}/2026-12-01", token) for node in nodes]
        for proc in tracks:
            await _synced(proc)
        other = await RawPeer.connect(f"{nodes[1].ws_url}/sync/{slug}/fleet?token={token}")
        await other.sync()

        revoked = time.monotonic()
        r = await http.delete(f"/api/v1/api-keys/{sync_key['id']}", headers=auth)
        assert r.status_code == 204, r.text
        for peer in keyed:
            assert await peer.closed(timeout=BOUND + 2) == (4401, "API key has been revoked")
        assert time.monotonic() - revoked < BOUND
        print(f"key revocation: sockets on both nodes closed {time.monotonic() - revoked:.2f} s after the DELETE")

        # A deleted vehicle: its track documents' JS clients close (4403) on both nodes.
        deleted = time.time()
        r = await http.delete(f"/api/v1/vehicles/{vehicle}", headers=auth)
        assert r.status_code == 204, r.text
        for proc in tracks:
            closed, ended = await _closed(proc)
            assert closed == {"code": 4403, "reason": "vehicle deleted"}
            assert ended - deleted < BOUND
            print(f"vehicle deletion: JS client process ended {ended - deleted:.2f} s after the DELETE")
        await other.send(bytes((protocol.QUERY_AWARENESS,)))
        await other.recv()  # the customer's fleet socket (a token) was left alone by both changes
        await other.close()
    logs = nodes[1].log_text()
    assert "cluster_event_received" in logs and sync_key["key"] not in logs  # no secret in the log


async def test_deleted_customer_closes_sockets_on_every_node(cluster, node_env, database_url):  # noqa: F811
    nodes = cluster.start(2)
    customer = await sync_peers.create_customer(database_url, slug="leaving")
    staying = await sync_peers.create_customer(database_url, slug="staying")
    token = sync_peers.token(TEST_SECRET, customer)
    peers = [_peer(node, customer, "fleet", token) for node in nodes]
    for proc in peers:
        await _synced(proc)
    other = await RawPeer.connect(
        f"{nodes[1].ws_url}/sync/staying/fleet?token={sync_peers.token(TEST_SECRET, staying)}"
    )
    await other.sync()
    _create_operator(node_env, "ops@example.com")
    async with httpx.AsyncClient(base_url=nodes[0].base_url, timeout=30) as http:
        r = await http.post("/api/v1/auth/login", json={"email": "ops@example.com", "password": OPERATOR_PASSWORD})
        ops = {"Authorization": f"Bearer {r.json()['token']}"}
        deleted = time.time()
        r = await http.delete(f"/api/v1/customers/{customer.id}", headers=ops)
        assert r.status_code == 204, r.text
    for proc in peers:
        closed, ended = await _closed(proc)
        assert closed["code"] == 4403
        assert ended - deleted < BOUND
    await other.send(bytes((protocol.QUERY_AWARENESS,)))
    await other.recv()  # another customer's socket on the same node is untouched
    await other.close()


async def test_api_key_expiry_closes_its_socket(server, db):
    slug = "keyed"
    cid = await fleet.customer(db, slug)
    admin = await fleet.api_key(db, cid, ("admin",))
    expires = time.time() + 4
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        r = await http.post(
            "/api/v1/api-keys",
            headers={"Authorization": f"Bearer {admin}"},
            json={
                "name": "short",
                "permissions": ["sync:read"],
                "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
            },
        )
        assert r.status_code == 201, r.text
    peer = await RawPeer.connect(
        f"{server.ws_url}/sync/{slug}/fleet", additional_headers={"Authorization": f"Bearer {r.json()['key']}"}
    )
    await peer.sync()
    assert await peer.closed(timeout=10) == (4401, "API key expired")
    assert time.time() - expires < BOUND


async def _control_reply(peer: RawPeer, timeout: float = 10.0) -> tuple[int, int | str]:
    while True:
        frame = await peer.recv(timeout)
        if control.is_control(frame):
            return control.read_server_frame(frame)


async def test_in_band_refresh_keeps_a_socket_past_its_first_expiry(server, database_url):
    customer = await sync_peers.create_customer(database_url)
    other = await sync_peers.create_customer(database_url, slug="other")
    base = f"{server.ws_url}/sync/{customer.slug}"
    first = sync_peers.token(TEST_SECRET, customer, docs=["fleet"], ttl=6)
    refreshed = await RawPeer.connect(f"{base}/fleet?token={first}")
    plain = await RawPeer.connect(f"{base}/fleet?token={first}")
    await refreshed.sync()
    await plain.sync()

    # refused refreshes leave the socket and its credential as they were
    for bad, reason in (
        (sync_peers.token(TEST_SECRET, other, docs=["fleet"]), "token is for another customer"),
        (sync_peers.token(TEST_SECRET, customer, docs=["tracks/*"]), "token does not allow this document"),
        ("wst1.garbage.sig", "invalid token signature"),
    ):
        await refreshed.send(control.refresh_frame(bad))
        assert await _control_reply(refreshed) == (control.REFRESH_REFUSED, reason)
        await asyncio.sleep(1.05)  # one refresh a second per socket
    await refreshed.send(control.refresh_frame(sync_peers.token(TEST_SECRET, customer, docs=["fleet", "x"], ttl=60)))
    kind, expires_at = await _control_reply(refreshed)
    assert kind == control.REFRESHED and expires_at >= time.time() + 50

    assert await plain.closed(timeout=15) == (4401, "token expired")  # the first token expired meanwhile
    edit = pycrdt.Doc()
    edit.get("t", type=pycrdt.Text).insert(0, "after expiry")
    await refreshed.send(protocol.update_frame(edit.get_update()))
    await refreshed.recv()  # still served: the echo of its own update
    await asyncio.sleep(0.5)  # the group commit
    stored = await sync_peers.stored_doc(database_url, customer, "fleet")
    assert str(stored.get("t", type=pycrdt.Text)) == "after expiry"

    # a broken refresh message is malformed (4400); another version or kind is ignored
    await refreshed.send(bytes((control.WEBHOST, 9, 0)))
    await refreshed.send(bytes((control.WEBHOST, control.VERSION, 42, 1, 2, 3)))
    await refreshed.send(bytes((control.WEBHOST, control.VERSION, control.REFRESH, 200, 1)) + b"x")
    assert await refreshed.closed() == (4400, "malformed message")
    assert "wst1." not in server.log_text()  # tokens are never logged


async def test_changed_permissions_narrow_open_sockets(cluster, node_env, db, database_url):  # noqa: F811
    """A "credentials_changed" event, as another node publishes it on the control channel: every
    open socket of the customer is checked again (the key cache forgets the customer first)."""
    (node,) = cluster.start(1)
    slug = "narrowed"
    cid = await fleet.customer(db, slug)
    writer_key = await fleet.api_key(db, cid, ("sync:write",))
    reader_key = await fleet.api_key(db, cid, ("sync:read",))
    peers = {}
    for name, key in (("writer", writer_key), ("reader", reader_key)):
        peers[name] = await RawPeer.connect(
            f"{node.ws_url}/sync/{slug}/fleet", additional_headers={"Authorization": f"Bearer {key}"}
        )
        await peers[name].sync()
    conn = await asyncpg.connect(database_url)  # the schema owner: what an admin tool would change
    try:
        await conn.execute(
            "UPDATE api_keys SET permissions = '{sync:read}' WHERE customer_id = $1 AND permissions = '{sync:write}'",
            cid,
        )
        await conn.execute(
            "UPDATE api_keys SET permissions = '{fleet:read}' WHERE customer_id = $1 AND permissions = '{sync:read}' AND key_hash = $2",
            cid,
            api_keys.digest(reader_key),
        )
    finally:
        await conn.close()
    client = aioredis.from_url(node_env["REDIS_URL"])
    try:
        message = {"event": "credentials_changed", "from": "another-node", "data": {"customer_id": str(cid)}}
        await client.publish(f"{node_env['REDIS_PREFIX']}events", json.dumps(message))
    finally:
        await client.aclose()
    assert await peers["reader"].closed(timeout=BOUND + 2) == (4403, "API key lacks sync:read / sync:write")
    await asyncio.sleep(0.5)  # the same pass checks the writer's socket
    edit = pycrdt.Doc()
    edit.get("t", type=pycrdt.Text).insert(0, "denied")
    await peers["writer"].send(protocol.update_frame(edit.get_update()))
    while True:  # the writer is read-only now: its update is answered with permission-denied
        frame = await peers["writer"].recv()
        if frame[0] == protocol.AUTH:
            break
    stored = await sync_peers.stored_doc(database_url, sync_peers.Customer(str(cid), slug), "fleet")
    assert str(stored.get("t", type=pycrdt.Text)) == ""
    await peers["writer"].close()


@pytest.mark.parametrize("module", ["y-websocket-v1", "y-websocket-v2", "y-websocket"])
async def test_js_clients_refresh_in_band(server, database_url, module):
    """The README's refresh snippet in a stock client of each major: the socket outlives its first token."""
    customer = await sync_peers.create_customer(database_url)
    first = sync_peers.token(TEST_SECRET, customer, docs=["fleet"], ttl=8)
    first_expires = time.time() + 8
    later = sync_peers.token(TEST_SECRET, customer, docs=["fleet"], ttl=600)
    plan = {
        "module": module,
        "server": f"{server.ws_url}/sync/{customer.slug}",
        "doc": "fleet",
        "params": {"token": first},
        "handleWebhost": True,
        "refresh": {"token": later, "afterMs": 500},
        "waitMs": 9000,  # past the first token's expiry
    }
    out = await asyncio.to_thread(sync_peers.js, "stock.mjs", json.dumps(plan))
    assert time.time() > first_expires + 1
    assert out["closed"] is None and out["errors"] == [], out
    assert len(out["refreshed"]) == 1 and out["refreshed"][0]["expiresAt"] >= time.time() + 500, out


async def _app_session(node, slug: str, email: str, password: str) -> tuple[str, str]:
    """A dispatcher app signing in on `node` (POST /api/v1/app/session) and getting a sync token
    with the cookie: (the session cookie, the token)."""
    async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as app:
        r = await app.post("/api/v1/app/session", json={"customer": slug, "email": email, "password": password})
        assert r.status_code == 200, r.text
        csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
        r = await app.post("/api/v1/sync-tokens", json={"docs": ["fleet"], "mode": "rw"}, headers=csrf)
        assert r.status_code in (200, 201), r.text
        return app.cookies["whs_session"], r.json()["token"]


async def test_app_sign_out_and_new_password_close_the_sessions_sockets_on_every_node(cluster, db):  # noqa: F811
    """Sign-out on node A closes (4401) the sockets node B holds for that session's sync tokens,
    within a few seconds; the user's other session stays served until an admin gives the user a new
    password (on node A too), which closes that one on node B as well."""
    node_a, node_b = cluster.start(2)
    slug = "dispatch"
    cid = await fleet.customer(db, slug)
    customer = sync_peers.Customer(str(cid), slug)
    admin = {"Authorization": f"Bearer {await fleet.api_key(db, cid, ('admin',))}"}
    password = "dispatch pass 1"
    async with httpx.AsyncClient(base_url=node_a.base_url, timeout=30) as http:
        r = await http.post(
            "/api/v1/users",
            headers=admin,
            json={"email": "ann@example.com", "name": "Ann", "role": "member", "password": password},
        )
        assert r.status_code == 201, r.text
        user_id = r.json()["id"]
        first_cookie, first_token = await _app_session(node_a, slug, "ann@example.com", password)
        _, second_token = await _app_session(node_a, slug, "ann@example.com", password)  # another browser
        signed_out = _peer(node_b, customer, "fleet", first_token)  # a real JS y-websocket client
        await _synced(signed_out)
        other = await RawPeer.connect(f"{node_b.ws_url}/sync/{slug}/fleet?token={second_token}")
        await other.sync()

        async with httpx.AsyncClient(base_url=node_a.base_url, timeout=30) as app:
            app.cookies.set("whs_session", first_cookie)
            r = await app.get("/api/v1/app/session")
            assert r.status_code == 200, r.text
            csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
            started = time.time()
            r = await app.delete("/api/v1/app/session", headers=csrf)
            assert r.status_code == 204, r.text
        closed, ended = await _closed(signed_out)
        assert closed == {"code": 4401, "reason": "signed out"}
        assert ended - started < BOUND
        print(f"app sign-out on node A: JS client on node B ended {ended - started:.2f} s after the DELETE")
        await other.send(bytes((protocol.QUERY_AWARENESS,)))
        await other.recv()  # the user's other session's socket was left alone

        changed = time.monotonic()
        r = await http.patch(f"/api/v1/users/{user_id}", headers=admin, json={"password": "dispatch pass 2"})
        assert r.status_code == 200, r.text
        assert await other.closed(timeout=BOUND + 2) == (4401, "signed out")
        assert time.monotonic() - changed < BOUND
        print(f"new password on node A: socket on node B closed {time.monotonic() - changed:.2f} s after the PATCH")
    logs = node_b.log_text()
    assert logs.count("app_session_connections_closed") >= 2 and "cluster_event_received" in logs
    assert first_cookie not in logs and first_token not in logs  # no secret in the log
