"""Suspending a customer through REST closes its open websockets (4403) and refuses new ones;
reactivating lets it back in. Real server process, real websocket client."""

import asyncio

import httpx
import websockets

from .conftest import OPERATOR_PASSWORD, bearer
from .test_fleet import _create_operator


async def _open(server, slug, token):
    return await websockets.connect(f"{server.ws_url}/sync/{slug}/fleet?token={token}")


async def _closed_with(ws, timeout=10.0) -> int:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


async def test_suspend_closes_and_refuses_sync_connections(server, server_env):
    _create_operator(server_env, "ops@example.com")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        ops = bearer(
            (
                await http.post("/api/v1/auth/login", json={"email": "ops@example.com", "password": OPERATOR_PASSWORD})
            ).json()["token"]
        )
        a = (await http.post("/api/v1/customers", headers=ops, json={"slug": "alpha", "name": "A"})).json()
        b = (await http.post("/api/v1/customers", headers=ops, json={"slug": "bravo", "name": "B"})).json()

        async def token(created):
            r = await http.post(
                "/api/v1/sync-tokens",
                headers=bearer(created["api_key"]["key"]),
                json={"docs": ["fleet"], "mode": "rw", "ttl_seconds": 300},
            )
            return r.json()["token"]

        ta, tb = await token(a), await token(b)
        ws_a, ws_b = await _open(server, "alpha", ta), await _open(server, "bravo", tb)
        await ws_a.recv()  # the server's first sync message: the socket is live
        await ws_b.recv()

        r = await http.post(f"/api/v1/customers/{a['customer']['id']}/suspend", headers=ops)
        assert r.status_code == 200
        assert await _closed_with(ws_a) == 4403
        assert ws_b.close_code is None  # the other tenant is untouched

        again = await _open(server, "alpha", ta)  # the token itself is still valid: refused by status
        assert await _closed_with(again) == 4403

        await http.post(f"/api/v1/customers/{a['customer']['id']}/reactivate", headers=ops)
        back = await _open(server, "alpha", ta)
        assert await back.recv()
        await back.close()
        await ws_b.close()
