"""The operator console's server side: sign-in with an HttpOnly cookie (SameSite=Strict, CSRF on
state-changing calls), every operator route reachable with it, staff refused deletes by the server,
customer credentials (API key, dispatcher-app cookie) refused; and the routes the console added:
a customer's usage and plan change, its API keys (list, revoke: admin), its migrations, the
infrastructure events of every customer, the live nodes; and the console page at /admin/."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import secrets

import redis.asyncio as aioredis

from storage import deployments as store
from storage import platform_users
from sync_server.domain.accounts.passwords import hash_password
from sync_server.node.app import create_app

from .conftest import OPERATOR_PASSWORD, Api, app_settings, error_of

SESSION = "/api/v1/operator/session"


async def _console(api, role: str = "admin"):
    """A fresh browser (its own cookie jar) signed in to the console as an operator of `role`;
    returns (client, csrf token)."""
    email = f"console-{role}@ops.example.com"
    await platform_users.upsert(api.runtime.db, email, hash_password(OPERATOR_PASSWORD), role)
    browser = api.app.test_client()
    r = await browser.post(SESSION, json={"email": email, "password": OPERATOR_PASSWORD})
    assert r.status_code == 200, await r.get_data(as_text=True)
    body = await r.get_json()
    assert body["operator"]["role"] == role and body["can_delete"] is (role == "admin")
    return browser, body["csrf_token"]


async def test_console_sign_in_sets_a_strict_httponly_cookie_and_csrf_guards_writes(api):
    await platform_users.upsert(api.runtime.db, "ops@example.com", hash_password(OPERATOR_PASSWORD), "admin")
    browser = api.app.test_client()
    wrong = await browser.post(SESSION, json={"email": "ops@example.com", "password": "nope"})
    assert wrong.status_code == 401 and (await error_of(wrong))["code"] == "invalid_credentials"
    assert not wrong.headers.get_all("Set-Cookie")
    r = await browser.post(SESSION, json={"email": "OPS@example.com", "password": OPERATOR_PASSWORD})
    assert r.status_code == 200
    body = await r.get_json()
    [cookie] = [c for c in r.headers.get_all("Set-Cookie") if c.startswith("whs_operator=")]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "wop_" not in str(body)  # the token never reaches the page's script
    assert r.headers["Cache-Control"] == "no-store"
    me = await browser.get(SESSION)
    assert me.status_code == 200 and (await me.get_json())["csrf_token"] == body["csrf_token"]
    # operator routes with the cookie alone; writes need the session's CSRF token
    assert (await browser.get("/api/v1/customers")).status_code == 200
    create = {"slug": "made-in-console", "name": "Made"}
    r = await browser.post("/api/v1/customers", json=create)
    assert r.status_code == 403 and (await error_of(r))["code"] == "csrf_failed"
    r = await browser.post("/api/v1/customers", json=create, headers={"X-CSRF-Token": "0" * 64})
    assert r.status_code == 403
    r = await browser.post("/api/v1/customers", json=create, headers={"X-CSRF-Token": body["csrf_token"]})
    assert r.status_code == 201, await r.get_data(as_text=True)
    # sign-out ends the session at once (and needs the token too)
    assert (await browser.delete(SESSION)).status_code == 403
    out = await browser.delete(SESSION, headers={"X-CSRF-Token": body["csrf_token"]})
    assert out.status_code == 204
    assert (await browser.get(SESSION)).status_code == 401
    assert (await browser.get("/api/v1/customers")).status_code == 401


async def test_a_stolen_cookie_value_as_bearer_still_is_an_operator_token_but_customer_credentials_never_are(api):
    c = await api.customer()
    # a customer API key on the console's routes
    for path in (SESSION, "/api/v1/customers", "/api/v1/nodes", "/api/v1/infrastructure-events"):
        assert (await api.get(path, headers=c.auth)).status_code == 401, path
    # a dispatcher-app user's session cookie
    await api.post(
        "/api/v1/users",
        headers=c.auth,
        json={"email": "u@example.com", "role": "admin", "password": "dispatch pass 1"},
    )
    app_browser = api.app.test_client()
    r = await app_browser.post(
        "/api/v1/app/session", json={"customer": c.slug, "email": "u@example.com", "password": "dispatch pass 1"}
    )
    assert r.status_code == 200
    for path in (SESSION, "/api/v1/customers", f"/api/v1/customers/{c.id}/usage", "/api/v1/nodes"):
        r = await app_browser.get(path)
        assert r.status_code == 401, (path, await r.get_data(as_text=True))
    # the app user's own routes still work (the two cookies never stand for each other)
    assert (await app_browser.get("/api/v1/geofences")).status_code == 200
    browser, _ = await _console(api)
    assert (await browser.get("/api/v1/geofences")).status_code == 401


async def test_staff_cannot_delete_revoke_or_migrate_and_admins_can(api):
    c = await api.customer()
    staff, staff_csrf = await _console(api, "staff")
    admin, admin_csrf = await _console(api, "admin")
    keys = await (await staff.get(f"/api/v1/customers/{c.id}/api-keys")).get_json()
    [key] = keys["data"]
    refused = [
        await staff.delete(f"/api/v1/customers/{c.id}", headers={"X-CSRF-Token": staff_csrf}),
        await staff.delete(f"/api/v1/customers/{c.id}/api-keys/{key['id']}", headers={"X-CSRF-Token": staff_csrf}),
        await staff.post(
            f"/api/v1/customers/{c.id}/migrations",
            json={"to": "single_tenant", "dry_run": True},
            headers={"X-CSRF-Token": staff_csrf},
        ),
    ]
    for r in refused:
        assert r.status_code == 403 and (await error_of(r))["code"] == "forbidden"
    # staff may do the rest: suspend and reactivate, change the plan
    h = {"X-CSRF-Token": staff_csrf}
    assert (await staff.post(f"/api/v1/customers/{c.id}/suspend", headers=h)).status_code == 200
    assert (await staff.post(f"/api/v1/customers/{c.id}/reactivate", headers=h)).status_code == 200
    r = await staff.post(f"/api/v1/customers/{c.id}/plan", json={"plan_id": "professional"}, headers=h)
    assert r.status_code == 200 and (await r.get_json())["plan_id"] == "professional"
    # admin revokes the key: the customer's key stops working at once
    assert (await api.get("/api/v1/vehicles", headers=c.auth)).status_code == 200
    r = await admin.delete(f"/api/v1/customers/{c.id}/api-keys/{key['id']}", headers={"X-CSRF-Token": admin_csrf})
    assert r.status_code == 204
    assert (await api.get("/api/v1/vehicles", headers=c.auth)).status_code == 401
    listed = await (await admin.get(f"/api/v1/customers/{c.id}/api-keys?include_revoked=true")).get_json()
    assert [k["revoked_at"] is not None for k in listed["data"]] == [True]
    assert (await admin.get(f"/api/v1/customers/{c.id}/api-keys")).status_code == 200
    assert (await (await admin.get(f"/api/v1/customers/{c.id}/api-keys")).get_json())["data"] == []
    r = await admin.delete(f"/api/v1/customers/{c.id}", headers={"X-CSRF-Token": admin_csrf})
    assert r.status_code == 204


async def test_usage_against_plan_limits_and_plan_change_by_an_operator(api):
    c = await api.customer(plan_id="hobby")
    op = await api.operator("staff")
    for i in range(2):
        r = await api.post("/api/v1/vehicles", headers=c.auth, json={"name": f"v{i}", "vehicle_identifier": f"v{i}"})
        assert r.status_code == 201, await r.get_data(as_text=True)
    usage = await (await api.get(f"/api/v1/customers/{c.id}/usage", headers=op)).get_json()
    own = await (await api.get("/api/v1/usage", headers=c.auth)).get_json()
    assert usage == own  # the operator sees exactly what the customer sees
    assert usage["plan_id"] == "hobby" and usage["vehicles"]["used"] == 2
    hobby_limit = usage["vehicles"]["limit"]
    r = await api.post(f"/api/v1/customers/{c.id}/plan", headers=op, json={"plan_id": "business"})
    assert r.status_code == 200
    after = await (await api.get(f"/api/v1/customers/{c.id}/usage", headers=op)).get_json()
    assert after["plan_id"] == "business" and after["vehicles"]["limit"] > hobby_limit
    # unknown plan, unknown customer, hostile ids
    r = await api.post(f"/api/v1/customers/{c.id}/plan", headers=op, json={"plan_id": "nope"})
    assert r.status_code == 404
    r = await api.post(f"/api/v1/customers/{c.id}/plan", headers=op, json={"plan_id": "BAD ID!"})
    assert r.status_code == 422
    missing = "00000000-0000-0000-0000-000000000000"
    assert (await api.get(f"/api/v1/customers/{missing}/usage", headers=op)).status_code == 404
    assert (await api.get(f"/api/v1/customers/{missing}/api-keys", headers=op)).status_code == 404
    assert (await api.get("/api/v1/customers/not-a-uuid/usage", headers=op)).status_code == 404


async def test_another_customers_key_cannot_be_revoked_through_a_customer_path(api):
    a, b = await api.customer(), await api.customer()
    op = await api.operator("admin")
    b_keys = await (await api.get(f"/api/v1/customers/{b.id}/api-keys", headers=op)).get_json()
    key_of_b = b_keys["data"][0]["id"]
    r = await api.delete(f"/api/v1/customers/{a.id}/api-keys/{key_of_b}", headers=op)
    assert r.status_code == 404
    assert (await api.get("/api/v1/vehicles", headers=b.auth)).status_code == 200


async def test_infrastructure_events_of_every_customer_newest_first_and_migrations_listed(api):
    a, b = await api.customer(), await api.customer()
    op = await api.operator("staff")
    db = api.runtime.db
    for cust, step in ((a, "provision"), (b, "provision"), (a, "configure")):
        await store.record_event(
            db, customer_id=cust.id, deployment_id=None, step=step, status="succeeded", data={"n": 1}
        )
    r = await api.get("/api/v1/infrastructure-events?limit=2", headers=op)
    assert r.status_code == 200, await r.get_data(as_text=True)
    first = (await r.get_json())["data"]
    assert [(e["customer_slug"], e["step"]) for e in first] == [(a.slug, "configure"), (b.slug, "provision")]
    older = await (await api.get(f"/api/v1/infrastructure-events?before={first[-1]['id']}", headers=op)).get_json()
    assert [(e["customer_slug"], e["step"]) for e in older["data"]][:1] == [(a.slug, "provision")]
    only_b = await (await api.get(f"/api/v1/infrastructure-events?customer_id={b.id}", headers=op)).get_json()
    assert {e["customer_slug"] for e in only_b["data"]} == {b.slug}
    for bad in ("limit=0", "limit=1000", "before=-1", f"before={2**63}", "customer_id=x"):
        assert (await api.get(f"/api/v1/infrastructure-events?{bad}", headers=op)).status_code == 422, bad
    migrations = await (await api.get(f"/api/v1/customers/{a.id}/migrations", headers=op)).get_json()
    assert migrations == {"data": []}


async def test_nodes_without_redis_lists_this_node(api):
    op = await api.operator("staff")
    r = await api.get("/api/v1/nodes", headers=op)
    assert r.status_code == 200
    body = await r.get_json()
    assert body["source"] == "local"
    [node] = body["nodes"]
    assert node["this_node"] is True and node["connections"] == 0 and node["rooms"] == 0


async def test_the_console_page_is_served_at_admin_with_the_csp(api):
    r = await api.get("/admin/")
    built = (importlib.resources.files("api") / "app_static" / "admin.html").is_file()
    if not built:
        assert r.status_code == 404 and (await error_of(r))["code"] == "app_not_built"
        return
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-cache"
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    html = await r.get_data(as_text=True)
    assert 'id="signin-form"' in html
    assets = [p for p in html.split('"') if p.startswith("/app/assets/")]
    assert assets
    for path in assets:
        assert (await api.get(path)).status_code == 200, path


async def test_nodes_from_redis_heartbeats_this_one_counted_now_and_odd_beats_tolerated(database_url, redis_url):
    prefix = f"nodes-{secrets.token_hex(4)}:"
    settings = dataclasses.replace(app_settings(database_url), redis_url=redis_url, redis_prefix=prefix)
    app = create_app(settings)
    client = aioredis.from_url(redis_url)
    try:
        async with app.test_app() as test_app:
            api = Api(app, test_app.test_client())
            op = await api.operator("staff")
            beat = {"connections": 7, "rooms": 3, "started_at": 1.0e9, "beat_at": 2.0e9}
            await client.set(f"{prefix}node:other-a", json.dumps(beat), px=60_000)
            await client.set(f"{prefix}node:old-style", b"1", px=60_000)  # a node from before the counts
            await client.set(f"{prefix}node:hostile", json.dumps({"connections": -5, "rooms": "x"}), px=60_000)
            r = await api.get("/api/v1/nodes", headers=op)
            assert r.status_code == 200, await r.get_data(as_text=True)
            body = await r.get_json()
            assert body["source"] == "redis"
            nodes = {n["id"]: n for n in body["nodes"]}
            assert nodes["other-a"] | {"id": None} == {
                "id": None,
                "this_node": False,
                "connections": 7,
                "rooms": 3,
                "started_at": 1.0e9,
                "beat_at": 2.0e9,
            }
            assert (nodes["old-style"]["connections"], nodes["old-style"]["rooms"]) == (None, None)
            assert (nodes["hostile"]["connections"], nodes["hostile"]["rooms"]) == (None, None)
            [this] = [n for n in body["nodes"] if n["this_node"]]
            assert this["connections"] == 0 and this["rooms"] == 0 and this["id"] == api.runtime.fanout.node
            # this node's own heartbeat carries the counts (read back from Redis)
            await api.runtime.fanout._heartbeat_once()
            own = json.loads(await client.get(f"{prefix}node:{this['id']}"))
            assert own["connections"] == 0 and own["rooms"] == 0 and own["beat_at"] > 0
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
