"""A key of customer A used on any id of customer B gets 404, on every route that takes an id."""

import re

from .conftest import error_of

SQUARE = {"type": "Polygon", "coordinates": [[[1.0, 1.0], [2.0, 1.0], [2.0, 2.0], [1.0, 1.0]]]}
BODIES = {  # a valid body per method and route family, so only the id can be the reason for 404
    ("PATCH", "vehicles"): {"name": "stolen"},
    ("PATCH", "drivers"): {"name": "stolen"},
    ("PATCH", "geofences"): {"name": "stolen"},
    ("PATCH", "users"): {"name": "stolen"},
    ("PATCH", "webhooks"): {"description": "stolen"},
}


async def _resources_of(api, customer) -> dict[str, str]:
    h = customer.auth
    v = await (await api.post("/api/v1/vehicles", headers=h, json={"name": "v", "vehicle_identifier": "v"})).get_json()
    d = await (await api.post("/api/v1/drivers", headers=h, json={"name": "d", "vehicle_id": v["id"]})).get_json()
    g = await (
        await api.post("/api/v1/geofences", headers=h, json={"kind": "polygon", "name": "g", "polygon": SQUARE})
    ).get_json()
    u = await (await api.post("/api/v1/users", headers=h, json={"email": "u@example.com"})).get_json()
    k = await (await api.post("/api/v1/api-keys", headers=h, json={"permissions": ["fleet:read"]})).get_json()
    w = await (
        await api.post("/api/v1/webhooks", headers=h, json={"url": "http://127.0.0.1:9/hook", "events": ["trip.*"]})
    ).get_json()
    sent = await (await api.post(f"/api/v1/webhooks/{w['id']}/test", headers=h)).get_json()
    return {
        "vehicle_id": v["id"],
        "driver_id": d["id"],
        "geofence_id": g["id"],
        "user_id": u["id"],
        "key_id": k["id"],
        "webhook_id": w["id"],
        "delivery_id": sent["id"],
    }


async def test_every_id_route_of_another_customer_is_404(api):
    a = await api.customer("alpha", plan_id="starter")
    b = await api.customer("bravo", plan_id="starter")
    b_ids = await _resources_of(api, b)
    checked = []
    for rule in api.app.url_map.iter_rules():
        view = api.app.view_functions[rule.endpoint]
        if getattr(view, "__auth__", (None,))[0] != "customer" or "<uuid:" not in rule.rule:
            continue
        names = re.findall(r"<uuid:(\w+)>", rule.rule)
        path = rule.rule
        for name in names:
            path = path.replace(f"<uuid:{name}>", b_ids[name])
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            family = rule.rule.split("/")[3]
            r = await api.client.open(path, method=method, headers=a.auth, json=BODIES.get((method, family), {}))
            assert r.status_code == 404, (method, path, await r.get_data(as_text=True))
            assert (await error_of(r))["code"] == "not_found"
            checked.append((method, rule.rule))
    # users 3, api-keys 2, vehicles 4 + positions and daily-summary 2, drivers 3, geofences 3,
    # webhooks 3 + test, deliveries and redeliver 3
    assert len(checked) == 23, checked

    # ...and B's things are untouched and still there for B
    for name, url in [
        ("vehicle_id", "vehicles"),
        ("driver_id", "drivers"),
        ("geofence_id", "geofences"),
        ("user_id", "users"),
        ("key_id", "api-keys"),
        ("webhook_id", "webhooks"),
    ]:
        r = await api.get(f"/api/v1/{url}/{b_ids[name]}", headers=b.auth)
        assert r.status_code == 200
        if url != "api-keys":
            assert (await r.get_json()).get("name") != "stolen"
    # A's lists never show B's rows
    for url in ("vehicles", "drivers", "geofences", "users", "webhooks"):
        assert (await (await api.get(f"/api/v1/{url}", headers=a.auth)).get_json())["data"] == []
    r = await api.post("/api/v1/drivers", headers=a.auth, json={"name": "x", "vehicle_id": b_ids["vehicle_id"]})
    assert r.status_code == 422  # B's vehicle is not a vehicle A can reference
    r = await api.get(f"/api/v1/webhooks/{b_ids['webhook_id']}/deliveries", headers=b.auth)
    assert [d["id"] for d in (await r.get_json())["data"]] == [b_ids["delivery_id"]]  # B's log is intact


async def test_raw_query_without_customer_sees_no_rows(api):
    c = await api.customer()
    await api.post("/api/v1/vehicles", headers=c.auth, json={"name": "v", "vehicle_identifier": "v"})
    async with api.runtime.db.platform() as conn:
        for table in ("customers", "api_keys", "subscriptions", "vehicles", "customer_users", "customer_user_sessions"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
