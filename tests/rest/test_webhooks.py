"""Webhook endpoints over REST: create (secret once), list, show, update, delete, test send,
delivery log and redelivery; validation in the 422 envelope; SSRF refusal; permissions."""

import pytest

from sync_server.node.app import create_app

from .conftest import Api, app_settings, error_of

HOOK = "http://127.0.0.1:9/hook"  # nothing listens: deliveries fail, which is fine here


async def _create(api, customer, **body):
    r = await api.post("/api/v1/webhooks", headers=customer.auth, json={"url": HOOK, "events": ["*"], **body})
    assert r.status_code == 201, await r.get_data(as_text=True)
    return await r.get_json()


async def test_crud_and_the_secret_is_shown_once(api):
    c = await api.customer()
    made = await _create(api, c, events=["geofence.*", "trip.started", "trip.started"], description="dispatch")
    assert made["secret"].startswith("whsec_") and len(made["secret"]) > 40
    assert made["events"] == ["geofence.*", "trip.started"] and made["enabled"] is True
    wid = made["id"]
    shown = await (await api.get(f"/api/v1/webhooks/{wid}", headers=c.auth)).get_json()
    assert "secret" not in shown and shown["description"] == "dispatch"
    listed = await (await api.get("/api/v1/webhooks", headers=c.auth)).get_json()
    assert [w["id"] for w in listed["data"]] == [wid] and "secret" not in listed["data"][0]
    assert made["secret"] not in await (await api.get("/api/v1/webhooks", headers=c.auth)).get_data(as_text=True)

    r = await api.patch(f"/api/v1/webhooks/{wid}", headers=c.auth, json={"enabled": False})
    body = await r.get_json()
    assert r.status_code == 200 and body["enabled"] is False and body["disabled_reason"] == "disabled by its owner"
    r = await api.post(f"/api/v1/webhooks/{wid}/test", headers=c.auth)
    assert r.status_code == 409 and (await error_of(r))["code"] == "webhook_disabled"
    body = await (await api.patch(f"/api/v1/webhooks/{wid}", headers=c.auth, json={"enabled": True})).get_json()
    assert body["enabled"] is True and body["disabled_reason"] is None

    r = await api.post(f"/api/v1/webhooks/{wid}/test", headers=c.auth)
    assert r.status_code == 202, await r.get_data(as_text=True)
    sent = await r.get_json()
    assert (
        sent["event_type"] == "webhook.test" and sent["status"] == "pending" and sent["webhook_id"].startswith("msg_")
    )
    log = await (await api.get(f"/api/v1/webhooks/{wid}/deliveries", headers=c.auth)).get_json()
    assert [d["id"] for d in log["data"]] == [sent["id"]]
    r = await api.post(f"/api/v1/webhooks/{wid}/deliveries/{sent['id']}/redeliver", headers=c.auth)
    assert r.status_code == 202
    again = await r.get_json()
    assert again["id"] != sent["id"] and again["webhook_id"] == sent["webhook_id"]
    log = await (await api.get(f"/api/v1/webhooks/{wid}/deliveries?limit=1", headers=c.auth)).get_json()
    assert len(log["data"]) == 1 and log["next_cursor"]
    rest = await (
        await api.get(f"/api/v1/webhooks/{wid}/deliveries?limit=1&cursor={log['next_cursor']}", headers=c.auth)
    ).get_json()
    assert {log["data"][0]["id"], rest["data"][0]["id"]} == {sent["id"], again["id"]}

    assert (await api.delete(f"/api/v1/webhooks/{wid}", headers=c.auth)).status_code == 204
    assert (await api.get(f"/api/v1/webhooks/{wid}", headers=c.auth)).status_code == 404
    assert (await api.get(f"/api/v1/webhooks/{wid}/deliveries", headers=c.auth)).status_code == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({"url": "ftp://example.com/x", "events": ["*"]}, "url"),
        ({"url": "http://user:pw@127.0.0.1/x", "events": ["*"]}, "url"),
        ({"url": "http://127.0.0.1/x#frag", "events": ["*"]}, "url"),
        ({"url": "http:///nohost", "events": ["*"]}, "url"),
        ({"url": "http://127.0.0.1:99999/x", "events": ["*"]}, "url"),
        ({"url": "http://127.0.0.1/" + "x" * 2100, "events": ["*"]}, "url"),
        ({"url": HOOK, "events": []}, "events"),
        ({"url": HOOK, "events": ["Geofence.Entered"]}, "events.0"),
        ({"url": HOOK, "events": ["geofence.*.x"]}, "events.0"),
        ({"url": HOOK, "events": ["*"], "description": "d" * 501}, "description"),
        ({"url": HOOK, "events": ["*"], "secret": "whsec_mine"}, "secret"),
        ({"events": ["*"]}, "url"),
    ],
)
async def test_invalid_bodies_get_the_422_envelope(api, body, field):
    c = await api.customer()
    r = await api.post("/api/v1/webhooks", headers=c.auth, json=body)
    assert r.status_code == 422, await r.get_data(as_text=True)
    err = await error_of(r)
    assert err["code"] == "validation_failed"
    assert field in [e["field"] for e in err["details"]["errors"]], err


async def test_patch_validates_and_refuses_null(api):
    c = await api.customer()
    wid = (await _create(api, c))["id"]
    for body, field in (
        ({"url": None}, "url"),
        ({"events": ["*", "BAD"]}, "events.1"),
        ({"enabled": "yes"}, "enabled"),
    ):
        r = await api.patch(f"/api/v1/webhooks/{wid}", headers=c.auth, json=body)
        assert r.status_code == 422, body
        assert field in [e["field"] for e in (await error_of(r))["details"]["errors"]]


async def test_permissions(api):
    c = await api.customer()
    reader = await api.key(c, ["webhooks:read"])
    fleet = await api.key(c, ["fleet:write"])
    wid = (await _create(api, c))["id"]
    h = {"Authorization": f"Bearer {reader}"}
    assert (await api.get(f"/api/v1/webhooks/{wid}", headers=h)).status_code == 200
    assert (await api.post("/api/v1/webhooks", headers=h, json={"url": HOOK, "events": ["*"]})).status_code == 403
    assert (await api.get("/api/v1/webhooks", headers={"Authorization": f"Bearer {fleet}"})).status_code == 403
    assert (await api.get("/api/v1/webhooks")).status_code == 401


async def test_private_addresses_are_refused_unless_allowed(database_url):
    settings = app_settings(database_url).__class__(
        **{**app_settings(database_url).__dict__, "webhook_allow_private_urls": False}
    )
    app = create_app(settings)
    async with app.test_app() as test_app:
        api = Api(app, test_app.test_client())
        c = await api.customer()
        for url in (
            "http://127.0.0.1:8080/hook",
            "http://localhost/hook",
            "http://10.1.2.3/hook",
            "http://192.168.0.10/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://100.64.0.1/hook",
            "http://0.0.0.0/hook",
        ):
            r = await api.post("/api/v1/webhooks", headers=c.auth, json={"url": url, "events": ["*"]})
            assert r.status_code == 422, url
            err = await error_of(r)
            assert err["details"]["errors"][0]["type"] == "url_refused", (url, err)
        # a public literal address is fine (nothing is sent at creation)
        assert (
            await api.post("/api/v1/webhooks", headers=c.auth, json={"url": "https://93.184.215.14/h", "events": ["*"]})
        ).status_code == 201
        wid = (await (await api.get("/api/v1/webhooks", headers=c.auth)).get_json())["data"][0]["id"]
        r = await api.patch(f"/api/v1/webhooks/{wid}", headers=c.auth, json={"url": "http://127.0.0.1/x"})
        assert r.status_code == 422


async def test_openapi_lists_every_webhook_route(api):
    doc = await (await api.get("/api/openapi.json")).get_json()
    paths = {p: set(ops) for p, ops in doc["paths"].items() if p.startswith("/api/v1/webhooks")}
    assert paths == {
        "/api/v1/webhooks": {"get", "post"},
        "/api/v1/webhooks/{webhook_id}": {"get", "patch", "delete"},
        "/api/v1/webhooks/{webhook_id}/test": {"post"},
        "/api/v1/webhooks/{webhook_id}/deliveries": {"get"},
        "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver": {"post"},
    }
