"""Customer users signing in to the dispatcher app: the session cookie (HttpOnly, SameSite=Lax),
CSRF on state-changing calls, roles enforced by the server (viewer: read-only sync tokens, no
edits), a customer admin managing users through the same REST routes, sign-out and a password
change ending sessions at once, 401/403 like every route; and the built app at /app/."""

from __future__ import annotations

import importlib.resources
import json
import time

from sync_server.domain.accounts import sync_tokens

from ..conftest import TEST_SECRET
from .conftest import error_of

PASSWORD = "dispatch pass 1"
SESSION = "/api/v1/app/session"


async def _user(api, customer, email: str, role: str, password: str = PASSWORD) -> dict:
    r = await api.post(
        "/api/v1/users",
        headers=customer.auth,
        json={"email": email, "name": email.split("@")[0], "role": role, "password": password},
    )
    assert r.status_code == 201, await r.get_data(as_text=True)
    return await r.get_json()


async def _sign_in(client, slug: str, email: str, password: str = PASSWORD):
    return await client.post(SESSION, json={"customer": slug, "email": email, "password": password})


def _fresh_client(api):
    return api.app.test_client()  # its own cookie jar: another browser


async def test_sign_in_sets_an_httponly_lax_cookie_and_the_session_answers_like_a_key(api):
    c = await api.customer()
    await _user(api, c, "ann@example.com", "member")
    browser = _fresh_client(api)
    r = await _sign_in(browser, c.slug, "ANN@example.com")
    assert r.status_code == 200, await r.get_data(as_text=True)
    body = await r.get_json()
    assert body["user"]["role"] == "member" and body["customer"]["slug"] == c.slug and body["can_write"] is True
    cookies = r.headers.get_all("Set-Cookie")
    session_cookie = next(h for h in cookies if h.startswith("whs_session="))
    assert "HttpOnly" in session_cookie and "SameSite=Lax" in session_cookie and "Path=/" in session_cookie
    assert "Secure" not in session_cookie  # plain HTTP here; over TLS (or X-Forwarded-Proto: https) it is Secure
    csrf_cookie = next(h for h in cookies if h.startswith("whs_csrf="))
    assert "HttpOnly" not in csrf_cookie and body["csrf_token"] in csrf_cookie
    assert r.headers["Cache-Control"] == "no-store"
    # reads with the cookie alone
    me = await browser.get(SESSION)
    assert me.status_code == 200 and (await me.get_json())["user"]["email"] == "ann@example.com"
    assert (await browser.get("/api/v1/geofences")).status_code == 200
    # writes need the CSRF header (double submit bound to the session)
    shape = {"kind": "circle", "name": "depot", "center": {"lat": 52.5, "lng": 13.4}, "radius_meters": 100}
    r = await browser.post("/api/v1/geofences", json=shape)
    assert r.status_code == 403 and (await error_of(r))["code"] == "csrf_failed"
    r = await browser.post("/api/v1/geofences", json=shape, headers={"X-CSRF-Token": "0" * 64})
    assert r.status_code == 403 and (await error_of(r))["code"] == "csrf_failed"
    r = await browser.post("/api/v1/geofences", json=shape, headers={"X-CSRF-Token": body["csrf_token"]})
    assert r.status_code == 201, await r.get_data(as_text=True)
    # a member is not an admin: no user management
    r = await browser.get("/api/v1/users")
    assert r.status_code == 403 and (await error_of(r))["code"] == "forbidden"
    # over TLS (a proxy in front) the cookie is Secure
    r = await _fresh_client(api).post(
        SESSION,
        json={"customer": c.slug, "email": "ann@example.com", "password": PASSWORD},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert all("Secure" in h for h in r.headers.get_all("Set-Cookie"))


async def test_wrong_credentials_get_one_401_and_malformed_cookies_are_refused(api):
    c = await api.customer()
    await _user(api, c, "ann@example.com", "admin")
    browser = _fresh_client(api)
    for slug, email, password in (
        (c.slug, "ann@example.com", "wrong password"),
        (c.slug, "nobody@example.com", PASSWORD),
        ("no-such-customer", "ann@example.com", PASSWORD),
    ):
        r = await _sign_in(browser, slug, email, password)
        assert r.status_code == 401 and (await error_of(r))["code"] == "invalid_credentials", (slug, email)
    assert (await browser.get(SESSION)).status_code == 401
    for bad in ("x", "wus1.not-a-uuid.x", "wus1." + "0" * 36 + "." + "a" * 43, "a" * 5000, "wus1..."):
        r = await api.get("/api/v1/geofences", headers={"Cookie": f"whs_session={bad}"})
        assert r.status_code == 401, bad
    r = await browser.post(SESSION, json={"customer": c.slug})
    assert r.status_code == 422


async def test_roles_are_enforced_by_the_server(api):
    c = await api.customer()
    await _user(api, c, "vic@example.com", "viewer")
    viewer = _fresh_client(api)
    body = await (await _sign_in(viewer, c.slug, "vic@example.com")).get_json()
    assert body["can_write"] is False and body["permissions"] == ["fleet:read", "sync:read", "tracking:read"]
    csrf = {"X-CSRF-Token": body["csrf_token"]}
    r = await viewer.post("/api/v1/sync-tokens", json={"docs": ["fleet"], "mode": "rw"}, headers=csrf)
    assert r.status_code == 403
    r = await viewer.post("/api/v1/sync-tokens", json={"docs": ["fleet", "dispatch"], "mode": "r"}, headers=csrf)
    assert r.status_code == 200
    grant = sync_tokens.verify(TEST_SECRET, (await r.get_json())["token"])
    assert grant.mode == "r" and grant.session_id and grant.docs == ("fleet", "dispatch")
    shape = {"kind": "circle", "name": "x", "center": {"lat": 1, "lng": 1}, "radius_meters": 10}
    assert (await viewer.post("/api/v1/geofences", json=shape, headers=csrf)).status_code == 403
    # an app session syncs only the app's documents, with short-lived tokens
    await _user(api, c, "mo@example.com", "member")
    member = _fresh_client(api)
    body = await (await _sign_in(member, c.slug, "mo@example.com")).get_json()
    csrf = {"X-CSRF-Token": body["csrf_token"]}
    r = await member.post("/api/v1/sync-tokens", json={"docs": ["tracks/*"], "mode": "rw"}, headers=csrf)
    assert r.status_code == 403
    r = await member.post("/api/v1/sync-tokens", json={"docs": ["fleet"], "ttl_seconds": 86400}, headers=csrf)
    grant = sync_tokens.verify(TEST_SECRET, (await r.get_json())["token"])
    assert grant.mode == "rw" and grant.expires_at - time.time() <= 600 + 5


async def test_customer_admin_manages_users_and_sign_out_or_new_password_ends_sessions(api):
    c = await api.customer()
    await _user(api, c, "ann@example.com", "admin")
    admin = _fresh_client(api)
    signed_in = await _sign_in(admin, c.slug, "ann@example.com")
    body = await signed_in.get_json()
    raw = next(h for h in signed_in.headers.get_all("Set-Cookie") if h.startswith("whs_session="))
    raw = raw.split(";")[0].split("=", 1)[1]
    csrf = {"X-CSRF-Token": body["csrf_token"]}
    r = await admin.post(
        "/api/v1/users", json={"email": "bo@example.com", "role": "member", "password": "bo's first pw"}, headers=csrf
    )
    assert r.status_code == 201, await r.get_data(as_text=True)
    bo_id = (await r.get_json())["id"]
    bo = _fresh_client(api)
    assert (await _sign_in(bo, c.slug, "bo@example.com", "bo's first pw")).status_code == 200
    assert (await bo.get(SESSION)).status_code == 200
    r = await admin.patch(f"/api/v1/users/{bo_id}", json={"password": "bo's second pw"}, headers=csrf)
    assert r.status_code == 200
    assert (await bo.get(SESSION)).status_code == 401  # the old session ended with the old password
    assert (await _sign_in(bo, c.slug, "bo@example.com", "bo's first pw")).status_code == 401
    assert (await _sign_in(bo, c.slug, "bo@example.com", "bo's second pw")).status_code == 200
    # sign-out: the session row ends; the cookie no longer works, even replayed by hand
    assert (await admin.delete(SESSION)).status_code == 403  # without the CSRF header
    r = await admin.delete(SESSION, headers=csrf)
    assert r.status_code == 204
    assert (await admin.get(SESSION)).status_code == 401
    r = await api.get("/api/v1/geofences", headers={"Cookie": f"whs_session={raw}"})
    assert r.status_code == 401 and (await error_of(r))["code"] == "unauthorized"


async def test_sessions_are_tenant_rows_another_customer_cannot_see(api):
    a = await api.customer()
    b = await api.customer()
    await _user(api, a, "ann@example.com", "admin")
    await _user(api, b, "ann@example.com", "admin")  # the same email in another customer
    browser = _fresh_client(api)
    await _sign_in(browser, a.slug, "ann@example.com")
    rt = api.runtime
    async with rt.db.tenant(b.id) as conn:
        assert await conn.fetchval("SELECT count(*) FROM customer_user_sessions") == 0
    async with rt.db.tenant(a.id) as conn:
        assert await conn.fetchval("SELECT count(*) FROM customer_user_sessions") == 1
    # A's session reads A's data only, whatever it asks for
    r = await browser.get("/api/v1/users")
    assert {u["email"] for u in (await r.get_json())["data"]} == {"ann@example.com"}
    async with rt.db.tenant(b.id) as conn:
        b_user = await conn.fetchval("SELECT id FROM customer_users")
    assert (await browser.get(f"/api/v1/users/{b_user}")).status_code == 404


async def test_the_built_app_is_served_from_the_package(api):
    index = importlib.resources.files("api") / "app_static" / "index.html"
    assert index.is_file(), "the web app is not built: run `make js`"
    r = await api.get("/app/")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert r.headers["Cache-Control"] == "no-cache"
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "https://tile.openstreetmap.org" in csp
    html = await r.get_data(as_text=True)
    assert "__APP_CONFIG__" not in html
    start = html.index('id="app-config">') + len('id="app-config">')
    config = json.loads(html[start : html.index("</script>", start)])
    assert config["tileUrl"] == "https://tile.openstreetmap.org/{z}/{x}/{y}.png" and config["staleMinutes"] == 5
    assets = [p for p in html.split('"') if p.startswith("/app/assets/")]
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for path in assets:
        r = await api.get(path)
        assert r.status_code == 200, path
        assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        kind = "text/javascript" if path.endswith(".js") else "text/css"
        assert r.headers["Content-Type"].startswith(kind), (path, r.headers["Content-Type"])
    for bad in (
        "/app/assets/nope.js",
        "/app/assets/..%2Findex.html",
        "/app/assets/.hidden",
        "/app/../api/openapi.json",
    ):
        r = await api.get(bad)
        assert r.status_code in (404, 308), bad


async def test_another_sites_page_cannot_sign_a_browser_in(api):
    """Login CSRF: another site's form posts the attacker's credentials as text/plain (which a form
    may send without asking), or its script fetches cross-site; both sign-ins that set a cookie (the
    dispatcher app's and the operator console's) refuse and set no cookie. This site's page and
    non-browser clients sign in as before."""
    from storage import platform_users
    from sync_server.domain.accounts.passwords import hash_password

    from .conftest import OPERATOR_PASSWORD

    c = await api.customer()
    await _user(api, c, "eve@example.com", "member")
    await platform_users.upsert(api.runtime.db, "eve-ops@example.com", hash_password(OPERATOR_PASSWORD), "admin")
    sign_ins = {
        SESSION: {"customer": c.slug, "email": "eve@example.com", "password": PASSWORD},
        "/api/v1/operator/session": {"email": "eve-ops@example.com", "password": OPERATOR_PASSWORD},
    }
    for path, credentials in sign_ins.items():
        text = json.dumps(credentials).encode()
        cases = [
            ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
            ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
            ({}, 415, "unsupported_media_type"),
            ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, 403, "cross_site_sign_in"),
            ({"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, 403, "cross_site_sign_in"),
        ]
        for headers, status, code in cases:
            browser = _fresh_client(api)
            r = await browser.post(path, data=text, headers=headers)
            assert r.status_code == status and (await error_of(r))["code"] == code, (path, headers)
            assert not r.headers.get_all("Set-Cookie"), (path, headers)
        for headers in (
            {"Content-Type": "application/json; charset=utf-8", "Sec-Fetch-Site": "same-origin"},
            {"Content-Type": "application/json"},  # curl, scripts: no Sec-Fetch-* at all
        ):
            r = await _fresh_client(api).post(path, data=text, headers=headers)
            assert r.status_code == 200 and r.headers.get_all("Set-Cookie"), (path, headers)
