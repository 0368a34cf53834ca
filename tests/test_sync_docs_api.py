"""HTTP document API (API key, tenant scoped) and graceful shutdown of the sync side."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pycrdt

from sync_server.sync import protocol

from .conftest import TEST_SECRET
from .support import sync_peers
from .support.sync_peers import RawPeer


def _update() -> bytes:
    doc = pycrdt.Doc()
    doc["m"] = m = pycrdt.Map()
    m["driver"] = "Ada"
    doc["points"] = a = pycrdt.Array()
    a.append({"t": 1, "lat": 52.5, "lng": 13.4})
    doc["notes"] = t = pycrdt.Text()
    t += "hello"
    return doc.get_update()


def _content(updates: list[bytes]) -> dict:
    doc = pycrdt.Doc()
    for u in updates:
        doc.apply_update(u)
    return {
        "m": doc.get("m", type=pycrdt.Map).to_py(),
        "points": doc.get("points", type=pycrdt.Array).to_py(),
        "notes": str(doc.get("notes", type=pycrdt.Text)),
    }


async def test_post_update_reaches_live_peers_is_durable_and_get_returns_it(server, database_url):
    customer = await sync_peers.create_customer(database_url)
    writer = await sync_peers.create_api_key(database_url, customer, ["sync:write", "sync:read"])
    reader_only = await sync_peers.create_api_key(database_url, customer, ["sync:read"])
    peer = await RawPeer.connect(
        f"{server.ws_url}/sync/{customer.slug}/fleet?token=" + sync_peers.token(TEST_SECRET, customer)
    )
    await peer.sync()
    update = _update()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        auth = {"Authorization": f"Bearer {writer}"}
        r = await http.post(
            "/api/v1/docs/fleet/updates", content=update, headers={**auth, "Content-Type": "application/octet-stream"}
        )
        assert r.status_code == 200, r.text
        # durable when answered
        # What is stored and relayed is the update's effect as yrs re-encodes it (same content; the
        # keys of a JSON value may come in another order).
        count, _, rows = await sync_peers.stored_updates(database_url, customer, "fleet")
        assert count == 1 and _content(rows) == _content([update])
        relayed = protocol.decode(await peer.recv())  # relayed to the live peer
        assert isinstance(relayed, protocol.SyncUpdate) and relayed.update == rows[0]
        r = await http.get("/api/v1/docs/fleet", params={"format": "json"}, headers=auth)
        assert r.json() == {
            "doc": "fleet",
            "content": {"m": {"driver": "Ada"}, "points": [{"t": 1.0, "lat": 52.5, "lng": 13.4}], "notes": "hello"},
        }
        r = await http.get("/api/v1/docs/fleet", headers=auth)
        assert r.headers["content-type"] == "application/octet-stream"
        check = pycrdt.Doc()
        check.apply_update(r.content)
        assert check.get("m", type=pycrdt.Map).to_py() == {"driver": "Ada"}
        # JSON body form, validation and permissions
        r = await http.post(
            "/api/v1/docs/fleet/updates", json={"update": base64.b64encode(update).decode()}, headers=auth
        )
        assert r.status_code == 200
        r = await http.post("/api/v1/docs/fleet/updates", json={"update": "AAAA", "extra": 1}, headers=auth)
        assert r.status_code == 422 and r.json()["error"]["details"]["fields"]["extra"]
        r = await http.post("/api/v1/docs/fleet/updates", content=b"\xff\xff\xff", headers=auth)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
        r = await http.post(
            "/api/v1/docs/fleet/updates", content=update, headers={"Authorization": f"Bearer {reader_only}"}
        )
        assert r.status_code == 403
        r = await http.get("/api/v1/docs/fleet")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = await http.get("/api/v1/docs/..%2Fx", headers=auth)
        assert r.status_code in (404, 422)


async def test_sigterm_flushes_and_closes_peers_with_1001(server, database_url):
    customer = await sync_peers.create_customer(database_url)
    peer = await RawPeer.connect(
        f"{server.ws_url}/sync/{customer.slug}/fleet?token=" + sync_peers.token(TEST_SECRET, customer)
    )
    await peer.sync()
    updates = []
    for i in range(200):
        doc = pycrdt.Doc()
        doc["m"] = m = pycrdt.Map()
        m[f"k{i}"] = i
        updates.append(doc.get_update())
        await peer.send(protocol.update_frame(updates[-1]))
    for _ in updates:
        await peer.recv()  # echoed: the server has applied all of them
    stopper = asyncio.get_running_loop().run_in_executor(None, server.stop)
    code, _ = await peer.closed()
    assert code == 1001
    await stopper
    _, _, rows = await sync_peers.stored_updates(database_url, customer, "fleet")
    assert sorted(rows) == sorted(updates)


def _strict(text: str):
    """Parse as JavaScript's JSON.parse would: NaN / Infinity are not JSON."""
    import json

    def refuse(constant):
        raise AssertionError(f"{constant} in the server's JSON")

    return json.loads(text, parse_constant=refuse)


async def test_json_view_writes_every_yjs_value_as_strict_json(server, database_url):
    """Binary values (a legitimate Yjs type) and non-finite numbers, at any depth, used to answer
    500 (bytearray is not JSON serializable) or NaN that JSON.parse refuses."""
    customer = await sync_peers.create_customer(database_url)
    key = await sync_peers.create_api_key(database_url, customer, ["sync:write", "sync:read"])
    doc = pycrdt.Doc()
    doc["m"] = m = pycrdt.Map()
    m["blob"] = b"\x00\xffbin"
    m["nan"] = float("nan")
    m["inf"] = float("inf")
    m["nested"] = pycrdt.Map(
        {"list": pycrdt.Array([b"\x01", float("-inf"), {"deep": b"\x02"}]), "text": pycrdt.Text("hi")}
    )
    m["sub"] = sub = pycrdt.Doc()
    doc["xml"] = xml = pycrdt.XmlFragment()
    xml.children.append(pycrdt.XmlElement("p", {"k": "v"}, [pycrdt.XmlText("hello")]))
    doc["list"] = pycrdt.Array([bytes(range(4)), 1.5])
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        r = await http.post("/api/v1/docs/fleet/updates", content=doc.get_update())
        assert r.status_code == 200, r.text
        r = await http.get("/api/v1/docs/fleet", params={"format": "json"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        content = _strict(r.text)["content"]
        assert content["m"] == {
            "blob": {"$binary": base64.b64encode(b"\x00\xffbin").decode()},
            "nan": {"$float": "NaN"},
            "inf": {"$float": "Infinity"},
            "nested": {
                "list": [{"$binary": "AQ=="}, {"$float": "-Infinity"}, {"deep": {"$binary": "Ag=="}}],
                "text": "hi",
            },
            "sub": {"$doc": str(sub.guid)},
        }
        assert content["xml"] == '<p k="v">hello</p>'
        assert content["list"] == [{"$binary": "AAECAw=="}, 1.5]

        # Nested past the limit: refused in the error format, not written partly (nor a 500).
        deep = pycrdt.Doc()
        deep["d"] = level = pycrdt.Map()
        for _ in range(150):
            level["k"] = inner = pycrdt.Map()
            level = inner
        r = await http.post("/api/v1/docs/deep/updates", content=deep.get_update())
        assert r.status_code == 200, r.text
        r = await http.get("/api/v1/docs/deep", params={"format": "json"})
        assert r.status_code == 422 and _strict(r.text)["error"]["code"] == "document_too_deep"

        # NaN in a JSON request body is not JSON either: refused like any unreadable body.
        r = await http.post(
            "/api/v1/docs/fleet/updates", content=b'{"update": NaN}', headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422 and _strict(r.text)["error"]["code"] == "validation_error"
