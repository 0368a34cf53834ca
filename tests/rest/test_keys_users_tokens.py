"""API keys, customer users and sync tokens."""

import datetime as dt

from sync_server.domain.accounts import api_keys, sync_tokens

from ..conftest import TEST_SECRET
from .conftest import bearer, error_of


async def test_api_key_lifecycle(api):
    c = await api.customer()
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()
    r = await api.post(
        "/api/v1/api-keys",
        headers=c.auth,
        json={
            "name": "backend",
            "permissions": ["fleet:read", "sync:write"],
            "environment": "test",
            "expires_at": future,
        },
    )
    assert r.status_code == 201
    created = await r.get_json()
    raw = created["key"]
    assert raw.startswith("whk_test_") and api_keys.is_well_formed(raw)
    assert created["permissions"] == ["fleet:read", "sync:write"] and created["expires_at"]
    async with api.runtime.db.tenant(c.id) as conn:  # only the hash and the prefix are stored
        row = await conn.fetchrow("SELECT prefix, key_hash FROM api_keys WHERE id = $1", created["id"])
    assert bytes(row["key_hash"]) == api_keys.digest(raw) and row["prefix"] == raw[:13] and raw not in str(dict(row))

    listed = (await (await api.get("/api/v1/api-keys", headers=c.auth)).get_json())["data"]
    assert [k["id"] for k in listed][-1] == created["id"] and all("key" not in k for k in listed)
    shown = await api.get(f"/api/v1/api-keys/{created['id']}", headers=c.auth)
    assert shown.status_code == 200 and "key" not in await shown.get_json()

    assert (await api.get("/api/v1/vehicles", headers=bearer(raw))).status_code == 200
    assert (
        await api.post("/api/v1/vehicles", headers=bearer(raw), json={"name": "x", "vehicle_identifier": "x"})
    ).status_code == 403  # fleet:read only
    forbidden = await api.get("/api/v1/api-keys", headers=bearer(raw))
    assert forbidden.status_code == 403 and (await error_of(forbidden))["details"] == {"missing": ["admin"]}

    assert (await api.delete(f"/api/v1/api-keys/{created['id']}", headers=c.auth)).status_code == 204
    r = await api.get("/api/v1/vehicles", headers=bearer(raw))
    assert r.status_code == 401 and (await error_of(r))["code"] == "api_key_revoked"
    active = (await (await api.get("/api/v1/api-keys", headers=c.auth)).get_json())["data"]
    assert created["id"] not in [k["id"] for k in active]
    everything = (await (await api.get("/api/v1/api-keys?include_revoked=true", headers=c.auth)).get_json())["data"]
    assert [k["revoked_at"] for k in everything if k["id"] == created["id"]][0] is not None
    assert (
        await api.delete("/api/v1/api-keys/00000000-0000-0000-0000-000000000000", headers=c.auth)
    ).status_code == 404


async def test_api_key_validation(api):
    c = await api.customer()
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
    for body, field in [
        ({"permissions": []}, "permissions"),
        ({"permissions": ["root"]}, "permissions.0"),
        ({"permissions": ["admin"], "environment": "prod"}, "environment"),
        ({"permissions": ["admin"], "expires_at": past}, "expires_at"),
        ({"permissions": ["admin"], "expires_at": "2999-01-01T00:00:00"}, "expires_at"),
        ({"permissions": ["admin"], "owner": "me"}, "owner"),
    ]:
        r = await api.post("/api/v1/api-keys", headers=c.auth, json=body)
        assert r.status_code == 422, body
        assert [e["field"] for e in (await error_of(r))["details"]["errors"]] == [field], body


async def test_expired_and_malformed_keys_are_refused(api):
    c = await api.customer()
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)).isoformat()
    raw = await api.key(c, ["fleet:read"], expires_at=soon)
    async with api.runtime.db.tenant(c.id) as conn:
        await conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE prefix = $1", raw[:13])
    r = await api.get("/api/v1/vehicles", headers=bearer(raw))
    assert r.status_code == 401 and (await error_of(r))["code"] == "api_key_expired"

    good = c.key
    typo = good[:15] + ("A" if good[15] != "A" else "B") + good[16:]  # checksum no longer matches
    for bad in (typo, good[:-1], "whk_live_short", "Basic abc"):
        r = await api.get("/api/v1/vehicles", headers=bearer(bad))
        assert r.status_code == 401 and (await error_of(r))["code"] == "invalid_api_key", bad
    r = await api.get("/api/v1/vehicles", headers={"Authorization": f"Token {good}"})
    assert r.status_code == 401
    assert (await api.get("/api/v1/vehicles")).status_code == 401
    unknown = api_keys.generate("live")  # well formed, never issued
    r = await api.get("/api/v1/vehicles", headers=bearer(unknown))
    assert r.status_code == 401 and (await error_of(r))["code"] == "invalid_api_key"


async def test_sync_tokens(api):
    c = await api.customer("acme")
    r = await api.post(
        "/api/v1/sync-tokens", headers=c.auth, json={"docs": ["fleet", "tracks/*"], "mode": "rw", "ttl_seconds": 120}
    )
    assert r.status_code == 200
    body = await r.get_json()
    grant = sync_tokens.verify(TEST_SECRET, body["token"])  # exactly what the websocket side verifies
    assert grant.customer_slug == "acme" and grant.customer_id == c.id and grant.can_write
    assert grant.allows("tracks/v1/2026-01-01") and not grant.allows("routes")
    assert body["customer_slug"] == "acme"
    assert abs(dt.datetime.fromisoformat(body["expires_at"]).timestamp() - grant.expires_at) < 1

    reader = await api.key(c, ["sync:read"])
    r = await api.post("/api/v1/sync-tokens", headers=bearer(reader), json={"docs": ["fleet"], "mode": "r"})
    assert r.status_code == 200 and not sync_tokens.verify(TEST_SECRET, (await r.get_json())["token"]).can_write
    r = await api.post("/api/v1/sync-tokens", headers=bearer(reader), json={"docs": ["fleet"], "mode": "rw"})
    assert r.status_code == 403 and (await error_of(r))["details"] == {"missing": ["sync:write"]}
    fleet_only = await api.key(c, ["fleet:read"])
    r = await api.post("/api/v1/sync-tokens", headers=bearer(fleet_only), json={"docs": ["fleet"], "mode": "r"})
    assert r.status_code == 403

    for body, field in [
        ({"docs": []}, "docs"),
        ({"docs": ["x"], "mode": "w"}, "mode"),
        ({"docs": ["x"], "ttl_seconds": sync_tokens.MAX_TTL_SECONDS + 1}, "ttl_seconds"),
        ({"docs": ["x"], "ttl_seconds": 0}, "ttl_seconds"),
        ({"docs": [""]}, "docs.0"),
        ({"docs": ["x"], "ttl_seconds": "60"}, "ttl_seconds"),
    ]:
        r = await api.post("/api/v1/sync-tokens", headers=c.auth, json=body)
        assert r.status_code == 422, body
        assert (await error_of(r))["details"]["errors"][0]["field"] == field, body


async def test_customer_users(api):
    c = await api.customer()
    viewer = await api.key(c, ["fleet:read"])
    r = await api.post(
        "/api/v1/users",
        headers=c.auth,
        json={"email": "Ann@Example.com", "name": "Ann", "role": "admin", "password": "long enough pw"},
    )
    assert r.status_code == 201
    ann = await r.get_json()
    assert ann["email"] == "Ann@Example.com" and "password" not in ann and "password_hash" not in ann
    r = await api.post("/api/v1/users", headers=c.auth, json={"email": "ann@EXAMPLE.com"})
    assert r.status_code == 409 and (await error_of(r))["code"] == "email_taken"
    r = await api.post("/api/v1/users", headers=c.auth, json={"email": "not-an-email"})
    assert r.status_code == 422
    r = await api.post("/api/v1/users", headers=c.auth, json={"email": "bo@example.com", "password": "short"})
    assert r.status_code == 422 and (await error_of(r))["details"]["errors"][0]["field"] == "password"
    assert (await api.post("/api/v1/users", headers=bearer(viewer), json={"email": "x@example.com"})).status_code == 403

    other = await api.customer()  # the same email is fine in another customer
    assert (await api.post("/api/v1/users", headers=other.auth, json={"email": "ann@example.com"})).status_code == 201

    bo = await (await api.post("/api/v1/users", headers=c.auth, json={"email": "bo@example.com"})).get_json()
    r = await api.patch(f"/api/v1/users/{bo['id']}", headers=c.auth, json={"role": "viewer", "name": "Bo"})
    assert r.status_code == 200 and (await r.get_json())["role"] == "viewer"
    r = await api.patch(f"/api/v1/users/{bo['id']}", headers=c.auth, json={"email": "ANN@example.com"})
    assert r.status_code == 409
    r = await api.patch(f"/api/v1/users/{bo['id']}", headers=c.auth, json={"role": None})
    assert r.status_code == 422
    r = await api.get("/api/v1/users", headers=c.auth, query_string={"role": "viewer"})
    assert [u["id"] for u in (await r.get_json())["data"]] == [bo["id"]]
    assert (await api.get(f"/api/v1/users/{bo['id']}", headers=c.auth)).status_code == 200
    assert (await api.delete(f"/api/v1/users/{bo['id']}", headers=c.auth)).status_code == 204
    assert (await api.get(f"/api/v1/users/{bo['id']}", headers=c.auth)).status_code == 404
    assert (await api.delete(f"/api/v1/users/{bo['id']}", headers=c.auth)).status_code == 404
    assert (await api.patch(f"/api/v1/users/{bo['id']}", headers=c.auth, json={"name": "x"})).status_code == 404
