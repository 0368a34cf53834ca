"""The ASGI endpoint that serves @operation routes (api/rest_endpoint.py) answers like Quart did:
request ids, the error format for what it does not serve itself (405, HEAD), body limits, the rate
limit, and no request state left behind."""

from __future__ import annotations

import dataclasses

from api import calls
from sync_server.node.app import create_app

from .conftest import app_settings, error_of


async def test_request_id_is_echoed_or_made(api):
    c = await api.customer()
    r = await api.get("/api/v1/vehicles", headers={**c.auth, "X-Request-ID": "req-lean-1"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "req-lean-1"
    r = await api.post("/api/v1/vehicles", headers=c.auth, json={"name": "Van", "vehicle_identifier": "V-1"})
    assert r.status_code == 201 and len(r.headers["X-Request-ID"]) == 32
    assert r.headers["Content-Type"] == "application/json"
    r = await api.get("/api/v1/vehicles/not-a-uuid", headers={**c.auth, "X-Request-ID": "req-quart-1"})
    assert r.status_code == 404 and (await error_of(r))["code"] == "not_found"
    assert r.headers["X-Request-ID"] == "req-quart-1"
    assert calls.current_or_none() is None  # nothing of the call outlives it


async def test_what_the_endpoint_leaves_to_quart(api):
    c = await api.customer()
    r = await api.put("/api/v1/vehicles", headers=c.auth, json={})
    assert r.status_code == 405 and (await error_of(r))["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]
    r = await api.head("/api/v1/vehicles", headers=c.auth)  # Quart runs the same view
    assert r.status_code == 200 and r.headers["X-Request-ID"]
    r = await api.head("/api/v1/vehicles")
    assert r.status_code == 401


async def test_body_errors(api):
    c = await api.customer()
    r = await api.post("/api/v1/vehicles", headers={**c.auth, "Content-Type": "application/json"}, data=b"{")
    assert r.status_code == 422 and (await error_of(r))["code"] == "invalid_json"
    r = await api.post("/api/v1/vehicles", headers=c.auth, json={"name": "Van", "vehicle_identifier": "V-1", "x": 1})
    error = await error_of(r)
    assert r.status_code == 422 and error["details"]["errors"][0]["field"] == "x"
    api.app.config["MAX_CONTENT_LENGTH"] = 100
    r = await api.post("/api/v1/vehicles", headers=c.auth, json={"name": "V" * 200, "vehicle_identifier": "V-2"})
    assert r.status_code == 413 and (await error_of(r))["code"] == "request_entity_too_large"


async def test_rate_limit_answers_429_with_retry_after_and_request_id(database_url):
    app = create_app(dataclasses.replace(app_settings(database_url), rest_rate_limit=2))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        headers = {"Authorization": "Bearer whk_live_nope", "X-Request-ID": "req-limited"}
        codes = [(await client.get("/api/v1/vehicles", headers=headers)) for _ in range(3)]
        assert [r.status_code for r in codes[:2]] == [401, 401]
        limited = codes[2]
        if limited.status_code == 401:  # the minute turned between the requests: one more
            limited = await client.get("/api/v1/vehicles", headers=headers)
        assert limited.status_code == 429 and (await error_of(limited))["code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1 and limited.headers["X-Request-ID"] == "req-limited"
