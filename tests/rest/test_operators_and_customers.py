"""Operator sessions and the customer lifecycle."""

import hashlib

from storage import platform_users
from sync_server.domain.accounts.passwords import hash_password

from .conftest import OPERATOR_PASSWORD, bearer, error_of


async def test_login_logout_and_token_storage(api):
    await platform_users.upsert(api.runtime.db, "Ops@Example.com", hash_password(OPERATOR_PASSWORD), "staff")
    r = await api.post("/api/v1/auth/login", json={"email": "ops@example.com", "password": OPERATOR_PASSWORD})
    assert r.status_code == 200
    body = await r.get_json()
    token = body["token"]
    assert body["operator"]["role"] == "staff" and body["expires_at"]
    async with api.runtime.db.platform() as conn:
        stored = await conn.fetchval("SELECT token_hash FROM tokens")
        assert await conn.fetchval("SELECT count(*) FROM tokens WHERE token_hash = $1", token.encode()) == 0
    assert bytes(stored) == hashlib.sha256(token.encode()).digest()  # only the hash is kept

    me = await api.get("/api/v1/auth/me", headers=bearer(token))
    assert me.status_code == 200 and (await me.get_json())["email"] == "Ops@Example.com"
    assert me.headers["X-Request-ID"]

    out = await api.post("/api/v1/auth/logout", headers=bearer(token))
    assert out.status_code == 204
    again = await api.get("/api/v1/auth/me", headers=bearer(token))
    assert again.status_code == 401 and (await error_of(again))["code"] == "unauthorized"


async def test_login_refusals(api):
    await platform_users.upsert(api.runtime.db, "ops@example.com", hash_password(OPERATOR_PASSWORD), "admin")
    for body in (
        {"email": "ops@example.com", "password": "wrong password"},
        {"email": "nobody@example.com", "password": OPERATOR_PASSWORD},
    ):
        r = await api.post("/api/v1/auth/login", json=body)
        assert r.status_code == 401 and (await error_of(r))["code"] == "invalid_credentials"
    r = await api.post("/api/v1/auth/login", json={"email": "ops@example.com", "password": "x", "remember": True})
    err = await error_of(r)
    assert r.status_code == 422 and err["details"]["errors"][0]["field"] == "remember"
    r = await api.post("/api/v1/auth/login", data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and (await error_of(r))["code"] == "invalid_json"


async def test_expired_operator_token_is_refused(api):
    headers = await api.operator("admin")
    async with api.runtime.db.platform() as conn:
        await conn.execute("UPDATE tokens SET expires_at = now() - interval '1 second'")
    r = await api.get("/api/v1/customers", headers=headers)
    assert r.status_code == 401


async def test_operator_routes_need_an_operator(api):
    customer = await api.customer()
    for headers in ({}, bearer("nonsense"), customer.auth):
        r = await api.get("/api/v1/customers", headers=headers)
        assert r.status_code == 401, headers
    r = await api.get("/api/v1/customers", headers=customer.auth)
    err = await error_of(r)
    assert err["code"] == "unauthorized" and "needs an operator token" in err["message"], err


async def test_an_operator_token_on_a_customer_route_is_told_it_needs_an_api_key(api):
    """Same 401 and code as any bad key, and a message saying what the route takes (issue 21)."""
    r = await api.get("/api/v1/api-keys", headers=await api.operator())
    err = await error_of(r)
    assert r.status_code == 401 and err["code"] == "invalid_api_key"
    assert err["message"] == "this route needs a customer API key (whk_live_... or whk_test_...), not an operator token"
    key = (await api.customer()).key
    broken = key[:-1] + ("x" if key[-1] != "x" else "y")  # a bad checksum keeps its own message
    err = await error_of(await api.get("/api/v1/api-keys", headers=bearer(broken)))
    assert err["message"] == "API key is malformed or its checksum does not match"


async def test_create_customer_returns_key_once_and_subscription(api):
    ops = await api.operator()
    r = await api.post(
        "/api/v1/customers",
        headers=ops,
        json={
            "slug": "acme",
            "name": "Acme",
            "email": "it@acme.example",
            "plan_id": "starter",
            "metadata": {"region": "eu"},
        },
    )
    assert r.status_code == 201
    body = await r.get_json()
    customer, key = body["customer"], body["api_key"]
    assert customer["slug"] == "acme" and customer["status"] == "active" and customer["plan_id"] == "starter"
    assert customer["metadata"] == {"region": "eu"}
    assert key["key"].startswith("whk_live_") and key["prefix"] == key["key"][:13] and key["permissions"] == ["admin"]
    # the key works, and is never shown again
    listed = await api.get("/api/v1/api-keys", headers=bearer(key["key"]))
    assert listed.status_code == 200
    assert "key" not in (await listed.get_json())["data"][0]
    sub = await api.get("/api/v1/subscription", headers=bearer(key["key"]))
    assert (await sub.get_json())["plan_id"] == "starter"


async def test_create_customer_failures(api):
    ops = await api.operator()
    await api.customer("acme", email="it@acme.example")
    cases = [
        ({"slug": "acme", "name": "Again"}, 409, "slug_taken"),
        ({"slug": "acme-2", "name": "Again", "email": "IT@ACME.example"}, 409, "email_taken"),
        ({"slug": "Bad Slug", "name": "x"}, 422, "validation_failed"),
        ({"slug": "okslug", "name": "x", "plan_id": "platinum"}, 422, "validation_failed"),
        ({"slug": "okslug", "name": "x", "color": "red"}, 422, "validation_failed"),
        ({"name": "x"}, 422, "validation_failed"),
    ]
    for body, status, code in cases:
        r = await api.post("/api/v1/customers", headers=ops, json=body)
        assert r.status_code == status, (body, await r.get_data(as_text=True))
        assert (await error_of(r))["code"] == code
    r = await api.post("/api/v1/customers", headers=ops, json={"slug": "x1", "name": 5})
    fields = [e["field"] for e in (await error_of(r))["details"]["errors"]]
    assert fields == ["name"]


async def test_list_filters_and_cursor_pagination(api):
    ops = await api.operator()
    made = [await api.customer(f"fleet-{i:02d}") for i in range(7)]
    await api.customer("other-co")
    await api.post(f"/api/v1/customers/{made[0].id}/suspend", headers=ops)

    seen, cursor = [], None
    while True:
        r = await api.get(
            "/api/v1/customers", headers=ops, query_string={"limit": 3, **({"cursor": cursor} if cursor else {})}
        )
        assert r.status_code == 200
        page = await r.get_json()
        seen += [c["slug"] for c in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [c.slug for c in made] + ["other-co"]

    r = await api.get("/api/v1/customers", headers=ops, query_string={"q": "fleet", "status": "active"})
    assert [c["slug"] for c in (await r.get_json())["data"]] == [c.slug for c in made[1:]]
    r = await api.get("/api/v1/customers", headers=ops, query_string={"status": "suspended"})
    assert [c["slug"] for c in (await r.get_json())["data"]] == ["fleet-00"]
    r = await api.get("/api/v1/customers", headers=ops, query_string={"plan_id": "business"})
    assert (await r.get_json())["data"] == []
    for bad in ({"cursor": "garbage"}, {"limit": 0}, {"status": "gone"}, {"sort": "name"}):
        r = await api.get("/api/v1/customers", headers=ops, query_string=bad)
        assert r.status_code == 422, bad
        assert (await error_of(r))["details"]["errors"][0]["location"] == "query"


async def test_show_update_suspend_reactivate(api):
    ops = await api.operator()
    c = await api.customer("acme")
    other = await api.customer("globex", email="ops@globex.example")
    r = await api.get(f"/api/v1/customers/{c.id}", headers=ops)
    assert r.status_code == 200 and (await r.get_json())["slug"] == "acme"
    assert (await api.get("/api/v1/customers/00000000-0000-0000-0000-000000000000", headers=ops)).status_code == 404
    assert (await api.get("/api/v1/customers/not-a-uuid", headers=ops)).status_code == 404

    r = await api.patch(f"/api/v1/customers/{c.id}", headers=ops, json={"name": "Acme Corp", "metadata": {"tier": 1}})
    body = await r.get_json()
    assert r.status_code == 200 and body["name"] == "Acme Corp" and body["metadata"] == {"tier": 1}
    r = await api.patch(f"/api/v1/customers/{c.id}", headers=ops, json={"slug": "renamed"})
    assert r.status_code == 422
    r = await api.patch(f"/api/v1/customers/{c.id}", headers=ops, json={"email": "OPS@globex.example"})
    assert r.status_code == 409 and (await error_of(r))["code"] == "email_taken"

    suspended = []

    async def on_suspend(customer_id):
        suspended.append(customer_id)

    api.runtime.subscribe("customer_suspended", on_suspend)
    r = await api.post(f"/api/v1/customers/{c.id}/suspend", headers=ops)
    assert r.status_code == 200 and (await r.get_json())["status"] == "suspended"
    assert suspended == [c.id]
    refused = await api.get("/api/v1/vehicles", headers=c.auth)
    assert refused.status_code == 403 and (await error_of(refused))["code"] == "customer_suspended"
    assert (await api.get("/api/v1/vehicles", headers=other.auth)).status_code == 200

    r = await api.post(f"/api/v1/customers/{c.id}/reactivate", headers=ops)
    assert r.status_code == 200 and (await r.get_json())["status"] == "active"
    assert (await api.get("/api/v1/vehicles", headers=c.auth)).status_code == 200
    missing = "00000000-0000-0000-0000-000000000001"
    assert (await api.post(f"/api/v1/customers/{missing}/suspend", headers=ops)).status_code == 404


async def test_delete_needs_admin_and_removes_everything(api):
    c = await api.customer("acme")
    await api.post("/api/v1/vehicles", headers=c.auth, json={"name": "V", "vehicle_identifier": "V1"})
    staff = await api.operator("staff")
    r = await api.delete(f"/api/v1/customers/{c.id}", headers=staff)
    assert r.status_code == 403 and (await error_of(r))["code"] == "forbidden"
    admin = await api.operator("admin")
    assert (await api.delete(f"/api/v1/customers/{c.id}", headers=admin)).status_code == 204
    assert (await api.get(f"/api/v1/customers/{c.id}", headers=admin)).status_code == 404
    assert (await api.delete(f"/api/v1/customers/{c.id}", headers=admin)).status_code == 404
    assert (await api.get("/api/v1/vehicles", headers=c.auth)).status_code == 401  # its keys are gone
    async with api.runtime.db.operator("test") as conn:
        assert await conn.fetchval("SELECT count(*) FROM vehicles") == 0


async def test_audited_operator_reads(api, capsys):
    ops = await api.operator()
    capsys.readouterr()
    r = await api.get("/api/v1/customers", headers={**ops, "X-Request-ID": "req-audit-1"})
    assert r.headers["X-Request-ID"] == "req-audit-1"
    logged = capsys.readouterr()
    lines = [line for line in (logged.out + logged.err).splitlines() if "operator_access" in line]
    assert any("list_customers" in line and "req-audit-1" in line for line in lines), lines
