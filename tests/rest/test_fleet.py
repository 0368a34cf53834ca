"""Vehicles, drivers, geofences, and plan limits."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx

from sync_server.domain.fleet import device_secrets

from .conftest import OPERATOR_PASSWORD, bearer, error_of

SQUARE = {"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.0], [13.1, 52.1], [13.0, 52.1], [13.0, 52.0]]]}


async def test_vehicle_crud_and_device_secret(api):
    c = await api.customer()
    r = await api.post(
        "/api/v1/vehicles",
        headers=c.auth,
        json={"name": "Van 1", "vehicle_identifier": "B-XY-1", "vehicle_type": "van"},
    )
    assert r.status_code == 201
    v = await r.get_json()
    assert v["id"] and v["vehicle_type"] == "van" and v["device_secret"].startswith("whd_")
    db = await api.runtime.registry.for_customer(c.id)
    async with db.tenant(c.id) as conn:
        stored = await conn.fetchval("SELECT device_secret_hash FROM vehicles WHERE id = $1", v["id"])
    assert device_secrets.matches(stored, v["device_secret"])
    shown = await (await api.get(f"/api/v1/vehicles/{v['id']}", headers=c.auth)).get_json()
    assert "device_secret" not in shown and shown["name"] == "Van 1"

    r = await api.post("/api/v1/vehicles", headers=c.auth, json={"name": "Dup", "vehicle_identifier": "B-XY-1"})
    assert r.status_code == 409 and (await error_of(r))["code"] == "vehicle_identifier_taken"
    for body in (
        {"name": "x"},
        {"name": "", "vehicle_identifier": "x"},
        {"name": "x", "vehicle_identifier": "y", "vin": 1},
        {"name": "x", "vehicle_identifier": "y", "vehicle_type": "Space Ship"},
    ):
        assert (await api.post("/api/v1/vehicles", headers=c.auth, json=body)).status_code == 422, body

    rotated = await (await api.post(f"/api/v1/vehicles/{v['id']}/device-secret", headers=c.auth)).get_json()
    async with db.tenant(c.id) as conn:
        stored = await conn.fetchval("SELECT device_secret_hash FROM vehicles WHERE id = $1", v["id"])
    assert device_secrets.matches(stored, rotated["device_secret"]) and not device_secrets.matches(
        stored, v["device_secret"]
    )

    r = await api.patch(f"/api/v1/vehicles/{v['id']}", headers=c.auth, json={"name": "Van One", "metadata": {"c": 1}})
    body = await r.get_json()
    assert r.status_code == 200 and body["name"] == "Van One" and body["vehicle_identifier"] == "B-XY-1"
    other = await (
        await api.post("/api/v1/vehicles", headers=c.auth, json={"name": "o", "vehicle_identifier": "O"})
    ).get_json()
    r = await api.patch(f"/api/v1/vehicles/{other['id']}", headers=c.auth, json={"vehicle_identifier": "B-XY-1"})
    assert r.status_code == 409
    r = await api.get("/api/v1/vehicles", headers=c.auth, query_string={"vehicle_type": "van"})
    assert [x["id"] for x in (await r.get_json())["data"]] == [v["id"]]
    assert (await api.delete(f"/api/v1/vehicles/{v['id']}", headers=c.auth)).status_code == 204
    assert (await api.get(f"/api/v1/vehicles/{v['id']}", headers=c.auth)).status_code == 404
    assert (await api.patch(f"/api/v1/vehicles/{v['id']}", headers=c.auth, json={"name": "x"})).status_code == 404
    assert (await api.post(f"/api/v1/vehicles/{v['id']}/device-secret", headers=c.auth)).status_code == 404


async def test_vehicle_pagination(api):
    c = await api.customer(plan_id="starter")
    ids = []
    for i in range(5):
        ids.append(
            (
                await (
                    await api.post(
                        "/api/v1/vehicles", headers=c.auth, json={"name": f"v{i}", "vehicle_identifier": f"v{i}"}
                    )
                ).get_json()
            )["id"]
        )
    got, cursor = [], None
    for _ in range(5):
        q = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await (await api.get("/api/v1/vehicles", headers=c.auth, query_string=q)).get_json()
        got += [v["id"] for v in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert got == ids


async def test_drivers(api):
    c = await api.customer()
    v = await (
        await api.post("/api/v1/vehicles", headers=c.auth, json={"name": "v", "vehicle_identifier": "v"})
    ).get_json()
    r = await api.post(
        "/api/v1/drivers",
        headers=c.auth,
        json={"name": "Dee", "email": "dee@example.com", "phone": "+49 30 1234", "vehicle_id": v["id"]},
    )
    assert r.status_code == 201
    d = await r.get_json()
    assert d["vehicle_id"] == v["id"]
    r = await api.post("/api/v1/drivers", headers=c.auth, json={"name": "Dup", "email": "DEE@example.com"})
    assert r.status_code == 409
    r = await api.post(
        "/api/v1/drivers", headers=c.auth, json={"name": "x", "vehicle_id": "00000000-0000-0000-0000-000000000000"}
    )
    assert r.status_code == 422 and (await error_of(r))["details"]["errors"][0]["field"] == "vehicle_id"
    r = await api.get("/api/v1/drivers", headers=c.auth, query_string={"vehicle_id": v["id"]})
    assert [x["id"] for x in (await r.get_json())["data"]] == [d["id"]]
    r = await api.patch(f"/api/v1/drivers/{d['id']}", headers=c.auth, json={"vehicle_id": None, "phone": None})
    body = await r.get_json()
    assert r.status_code == 200 and body["vehicle_id"] is None and body["phone"] is None and body["email"]
    assert (await api.get(f"/api/v1/drivers/{d['id']}", headers=c.auth)).status_code == 200
    assert (await api.delete(f"/api/v1/drivers/{d['id']}", headers=c.auth)).status_code == 204
    assert (await api.delete(f"/api/v1/drivers/{d['id']}", headers=c.auth)).status_code == 404


async def test_geofences(api):
    c = await api.customer()
    r = await api.post(
        "/api/v1/geofences",
        headers=c.auth,
        json={"kind": "circle", "name": "Depot", "center": {"lat": 52.5, "lng": 13.4}, "radius_meters": 500},
    )
    assert r.status_code == 201
    circle = await r.get_json()
    box = circle["bbox"]
    assert box["min_lat"] < 52.5 < box["max_lat"] and box["min_lng"] < 13.4 < box["max_lng"]
    assert abs((box["max_lat"] - box["min_lat"]) * 111_195 - 1000) < 5  # 2 x 500 m of latitude
    r = await api.post("/api/v1/geofences", headers=c.auth, json={"kind": "polygon", "name": "Zone", "polygon": SQUARE})
    assert r.status_code == 201
    poly = await r.get_json()
    assert poly["bbox"] == {"min_lat": 52.0, "min_lng": 13.0, "max_lat": 52.1, "max_lng": 13.1}
    assert poly["polygon"] == SQUARE and poly["center"] is None

    open_ring = {"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.0], [13.1, 52.1], [13.0, 52.1]]]}
    three = {"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.0], [13.0, 52.0]]]}
    out_of_range = {"type": "Polygon", "coordinates": [[[13.0, 52.0], [200.0, 52.0], [13.1, 95.0], [13.0, 52.0]]]}
    cases = [
        ({"kind": "polygon", "name": "z", "polygon": open_ring}, ["polygon.coordinates.0"]),
        ({"kind": "polygon", "name": "z", "polygon": three}, ["polygon.coordinates.0"]),
        (
            {"kind": "polygon", "name": "z", "polygon": out_of_range},
            ["polygon.coordinates.0.1.0", "polygon.coordinates.0.2.1"],
        ),
        ({"kind": "polygon", "name": "z", "polygon": {**SQUARE, "type": "LineString"}}, None),
        ({"kind": "circle", "name": "c", "center": {"lat": 91, "lng": 0}, "radius_meters": 5}, ["center.lat"]),
        ({"kind": "circle", "name": "c", "center": {"lat": 1, "lng": 0}, "radius_meters": 0}, ["radius_meters"]),
        ({"kind": "circle", "name": "c", "center": {"lat": 1, "lng": 0}}, ["radius_meters"]),
        ({"kind": "square", "name": "c"}, ["kind"]),
        ({"name": "c"}, ["kind"]),
    ]
    for body, fields in cases:
        r = await api.post("/api/v1/geofences", headers=c.auth, json=body)
        assert r.status_code == 422, body
        if fields is not None:
            assert [e["field"] for e in (await error_of(r))["details"]["errors"]] == fields, body

    r = await api.patch(
        f"/api/v1/geofences/{circle['id']}", headers=c.auth, json={"radius_meters": 1000, "active": False}
    )
    body = await r.get_json()
    assert r.status_code == 200 and body["radius_meters"] == 1000 and not body["active"]
    assert body["bbox"]["max_lat"] - body["bbox"]["min_lat"] > box["max_lat"] - box["min_lat"]
    r = await api.patch(f"/api/v1/geofences/{circle['id']}", headers=c.auth, json={"polygon": SQUARE})
    assert r.status_code == 422 and (await error_of(r))["details"]["errors"][0]["field"] == "polygon"
    r = await api.patch(f"/api/v1/geofences/{poly['id']}", headers=c.auth, json={"polygon": open_ring})
    assert r.status_code == 422
    bigger = {"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.5, 52.0], [13.5, 52.5], [13.0, 52.0]]]}
    r = await api.patch(f"/api/v1/geofences/{poly['id']}", headers=c.auth, json={"polygon": bigger})
    assert r.status_code == 200 and (await r.get_json())["bbox"]["max_lat"] == 52.5

    r = await api.get("/api/v1/geofences", headers=c.auth, query_string={"active": "true"})
    assert [g["id"] for g in (await r.get_json())["data"]] == [poly["id"]]
    r = await api.get("/api/v1/geofences", headers=c.auth, query_string={"kind": "circle"})
    assert [g["id"] for g in (await r.get_json())["data"]] == [circle["id"]]
    assert (await api.get(f"/api/v1/geofences/{poly['id']}", headers=c.auth)).status_code == 200
    assert (await api.delete(f"/api/v1/geofences/{poly['id']}", headers=c.auth)).status_code == 204
    assert (await api.get(f"/api/v1/geofences/{poly['id']}", headers=c.auth)).status_code == 404


async def test_plan_limits_answer_402_with_the_limit(api):
    c = await api.customer(plan_id="hobby")
    for i in range(5):
        assert (await api.post("/api/v1/drivers", headers=c.auth, json={"name": f"d{i}"})).status_code == 201
    r = await api.post("/api/v1/drivers", headers=c.auth, json={"name": "one too many"})
    assert r.status_code == 402
    err = await error_of(r)
    assert err["code"] == "plan_limit_reached"
    assert err["details"] == {"resource": "drivers", "limit": 5, "current": 5, "plan_id": "hobby"}
    for i in range(20):
        r = await api.post(
            "/api/v1/geofences",
            headers=c.auth,
            json={"kind": "circle", "name": f"g{i}", "center": {"lat": 0, "lng": 0}, "radius_meters": 9},
        )
        assert r.status_code == 201
    r = await api.post(
        "/api/v1/geofences",
        headers=c.auth,
        json={"kind": "circle", "name": "g", "center": {"lat": 0, "lng": 0}, "radius_meters": 9},
    )
    assert r.status_code == 402 and (await error_of(r))["details"]["limit"] == 20


def _create_operator(env: dict, email: str) -> None:
    exe = Path(sys.executable).parent / "webhost-sync"
    subprocess.run(
        [str(exe), "create-operator", "--email", email, "--password", OPERATOR_PASSWORD],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=120,
    )


async def test_plan_limit_holds_under_20_concurrent_creates(server, server_env):
    """Through the real server process: 20 simultaneous creates on hobby (5 vehicles) make exactly 5."""
    _create_operator(server_env, "ops@example.com")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        r = await http.post("/api/v1/auth/login", json={"email": "ops@example.com", "password": OPERATOR_PASSWORD})
        ops = bearer(r.json()["token"])
        r = await http.post("/api/v1/customers", headers=ops, json={"slug": "racer", "name": "Racer"})
        key = bearer(r.json()["api_key"]["key"])

        async def create(i):
            return await http.post(
                "/api/v1/vehicles", headers=key, json={"name": f"v{i}", "vehicle_identifier": f"v{i}"}
            )

        answers = await asyncio.gather(*(create(i) for i in range(20)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [201] * 5 + [402] * 15, statuses
        refused = [a.json()["error"] for a in answers if a.status_code == 402]
        assert {r["code"] for r in refused} == {"plan_limit_reached"}
        assert [r["details"] for r in refused] == [
            {"resource": "vehicles", "limit": 5, "current": 5, "plan_id": "hobby"}
        ] * 15  # the plan and count read again for the answer, as the INSERT read them
        listed = (await http.get("/api/v1/vehicles", headers=key)).json()["data"]
        assert len(listed) == 5
