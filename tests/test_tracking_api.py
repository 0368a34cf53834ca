"""Tracking REST against a real server: paging, exports, latest, events, summary, usage, retention."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import xml.etree.ElementTree as ET

import httpx

from storage import DatabaseRegistry, sealing
from sync_server.domain.tracking import retention
from sync_server.domain.tracking.distance import geodesic
from sync_server.domain.tracking.pipeline import Batch, Pipeline

from .support import fleet

UTC = dt.UTC
TODAY = dt.datetime.now(UTC).date()
START = dt.datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=UTC) - dt.timedelta(days=1)  # yesterday 00:00


def fixes(n: int) -> list[dict]:
    """Yesterday from 10:00, one fix a minute going east, speeds 0..n-1 m/s."""
    base = START + dt.timedelta(hours=10)
    return [
        {
            "t": (base + dt.timedelta(minutes=i)).isoformat(),
            "lat": 52.5,
            "lng": 13.40 + i * 0.002,
            "speed": float(i),
            "alt": 30.0,
        }
        for i in range(n)
    ]


async def _materialized(db, n=25, geofence=True):
    cid = await fleet.customer(db)
    vid = await fleet.vehicle(db, cid)
    fence = await fleet.circle(db, cid, "depot", 52.5, 13.41, 300) if geofence else None
    registry = DatabaseRegistry(db)
    await registry.reload()
    day = START.date()
    outcome = await Pipeline(registry).process(Batch(str(cid), vid, fixes(n), doc=f"tracks/{vid}/{day}", day=day))
    assert outcome.stored == n
    return cid, vid, fence, await fleet.api_key(db, cid, ["tracking:read"])


def _h(key):
    return {"Authorization": f"Bearer {key}"}


async def test_positions_json_cursor_paging(db, server):
    cid, vid, _, key = await _materialized(db)
    params = {"from": START.isoformat(), "to": (START + dt.timedelta(days=1)).isoformat(), "limit": "10"}
    seen, pages = [], 0
    async with httpx.AsyncClient(base_url=server.base_url, headers=_h(key)) as http:
        cursor = None
        while True:
            r = await http.get(
                f"/api/v1/vehicles/{vid}/positions", params={**params, **({"cursor": cursor} if cursor else {})}
            )
            assert r.status_code == 200, r.text
            body = r.json()
            seen += [p["time"] for p in body["data"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert pages == 3 and len(seen) == 25 and seen == sorted(seen) and len(set(seen)) == 25
        first = (await http.get(f"/api/v1/vehicles/{vid}/positions", params=params)).json()["data"][0]
        assert first == {
            "time": (START + dt.timedelta(hours=10)).isoformat().replace("+00:00", "Z"),
            "lat": 52.5,
            "lng": 13.4,
            "speed": 0.0,
            "heading": None,
            "accuracy": None,
            "altitude": 30.0,
        }
        # bad input: unknown field, bad cursor, reversed range, unknown vehicle, no key
        r = await http.get(f"/api/v1/vehicles/{vid}/positions", params={"colour": "red"})
        assert r.status_code == 422 and r.json()["error"]["details"]["errors"][0]["field"] == "colour"
        r = await http.get(f"/api/v1/vehicles/{vid}/positions", params={"cursor": "nope"})
        assert r.status_code == 422 and r.json()["error"]["details"]["errors"][0]["field"] == "cursor"
        r = await http.get(
            f"/api/v1/vehicles/{vid}/positions", params={"from": "2030-01-02T00:00:00Z", "to": "2030-01-01T00:00:00Z"}
        )
        assert r.status_code == 422
        r = await http.get(f"/api/v1/vehicles/{cid}/positions")
        assert r.status_code == 404
        r = await http.get(f"/api/v1/vehicles/{vid}/positions", headers={"Authorization": ""})
        assert r.status_code == 401


async def test_exports_geojson_csv_gpx(db, server):
    cid, vid, _, key = await _materialized(db)
    rng = {"from": START.isoformat(), "to": (START + dt.timedelta(days=1)).isoformat()}
    async with httpx.AsyncClient(base_url=server.base_url, headers=_h(key)) as http:
        r = await http.get(f"/api/v1/vehicles/{vid}/positions", params={**rng, "format": "geojson"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/geo+json")
        doc = json.loads(r.text)
        assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 25
        assert doc["features"][3]["geometry"] == {"type": "Point", "coordinates": [13.406, 52.5]}
        assert doc["features"][3]["properties"]["speed"] == 3.0

        r = await http.get(f"/api/v1/vehicles/{vid}/positions", params={**rng, "format": "csv"})
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert len(rows) == 25 and float(rows[1]["lng"]) == 13.40 + 0.002 and rows[1]["heading"] == ""

        r = await http.get(f"/api/v1/vehicles/{vid}/positions", params={**rng, "format": "gpx"})
        ns = {"g": "http://www.topografix.com/GPX/1/1"}
        points = ET.fromstring(r.text).findall(".//g:trkpt", ns)
        assert len(points) == 25 and points[0].get("lat") == "52.5" and points[0].find("g:ele", ns).text == "30.0"

        # an export page: X-Next-Cursor continues where the limit stopped
        r = await http.get(f"/api/v1/vehicles/{vid}/positions", params={**rng, "format": "csv", "limit": "20"})
        assert len(r.text.strip().splitlines()) == 21
        r2 = await http.get(
            f"/api/v1/vehicles/{vid}/positions", params={**rng, "format": "csv", "cursor": r.headers["X-Next-Cursor"]}
        )
        assert len(r2.text.strip().splitlines()) == 6 and "X-Next-Cursor" not in r2.headers


async def test_latest_events_summary_and_usage(db, server):
    cid, vid, fence, key = await _materialized(db)
    async with httpx.AsyncClient(base_url=server.base_url, headers=_h(key)) as http:
        latest = (await http.get("/api/v1/positions/latest")).json()["data"]
        assert len(latest) == 1 and latest[0]["vehicle_id"] == str(vid) and latest[0]["speed"] == 24.0

        # the circle (300 m around lng 13.41) holds the fixes 13.406 .. 13.414 (0.002 deg = 135.5 m here)
        events = []
        cursor = None
        while True:
            r = await http.get(
                "/api/v1/geofence-events",
                params={"vehicle_id": str(vid), "limit": "1", **({"cursor": cursor} if cursor else {})},
            )
            body = r.json()
            events += body["data"]
            cursor = body["next_cursor"]
            if not cursor:
                break
        base = START + dt.timedelta(hours=10)
        assert [(e["event"], e["time"], e["geofence_name"]) for e in events] == [
            ("enter", (base + dt.timedelta(minutes=3)).isoformat().replace("+00:00", "Z"), "depot"),
            ("exit", (base + dt.timedelta(minutes=8)).isoformat().replace("+00:00", "Z"), "depot"),
        ]

        r = await http.get(
            f"/api/v1/vehicles/{vid}/daily-summary", params={"from": START.date().isoformat(), "to": TODAY.isoformat()}
        )
        yesterday, today = r.json()["data"]
        expected = sum(geodesic(52.5, 13.40 + i * 0.002, 52.5, 13.40 + (i + 1) * 0.002) for i in range(24))
        assert yesterday["points"] == 25 and abs(yesterday["distance_m"] - expected) < 0.5
        assert yesterday["max_speed"] == 24.0 and today == {
            "day": TODAY.isoformat(),
            "points": 0,
            "distance_m": 0.0,
            "max_speed": None,
            "first_fix": None,
            "last_fix": None,
        }

        usage = (await http.get("/api/v1/tracking/usage", params={"day": START.date().isoformat()})).json()
        assert usage == {
            "day": START.date().isoformat(),
            "plan_id": "hobby",
            "gps_points": 25,
            "limit": 250000,
            "remaining": 249975,
            "quota_exceeded": False,
            "rejected": {},
        }


_AGED = {  # fleet event rows older than the retention (their table and time)
    "fleet_events": "fleet_events WHERE time",
    "trips": "trips WHERE end_time IS NOT NULL AND end_time",
    "stops": "stops WHERE end_time IS NOT NULL AND end_time",
}


async def test_retention_removes_rows_past_the_plan_in_batches(db):
    await fleet.plan(db, "short", points_per_day=1000, retention_days=2)
    cid = await fleet.customer(db, plan="short")
    keep_cid = await fleet.customer(db)  # hobby: 30 days
    registry = DatabaseRegistry(db)
    await registry.reload()
    pipeline = Pipeline(registry)
    now = dt.datetime.now(UTC)
    for customer in (cid, keep_cid):
        vid = await fleet.vehicle(db, customer)
        await fleet.circle(db, customer, "depot", 52.5, 13.41, 300)
        for days_ago in (1, 3):
            base = now - dt.timedelta(days=days_ago)
            raw = [
                {"t": (base + dt.timedelta(seconds=i * 30)).isoformat(), "lat": 52.5, "lng": 13.40 + i * 0.002}
                for i in range(25)
            ]
            # materialized back then, while still inside the retention
            await pipeline.process(Batch(str(customer), vid, raw, source="osmand"), now=base + dt.timedelta(hours=1))
    async with db.tenant(cid) as conn:  # a delivery log: one finished 3 days ago, one still pending
        hook = await conn.fetchval(
            "INSERT INTO webhook_endpoints (customer_id, url, events, secret) "
            "VALUES ($1, 'https://a.example/h', '{*}', $2) RETURNING id",
            cid,
            sealing.seal("whsec_x", f"webhook_endpoints.secret/{cid}"),  # sealed at rest (migration 0121)
        )
        for status, finished in (("delivered", now - dt.timedelta(days=3)), ("pending", None)):
            await conn.execute(
                "INSERT INTO webhook_outbox (customer_id, endpoint_id, message_id, event_type, body, occurred_at, "
                "status, finished_at, created_at) VALUES ($1, $2, gen_random_uuid(), 'trip.started', '{}', $4, $3, $5, $4)",
                cid,
                hook,
                status,
                now - dt.timedelta(days=3),
                finished,
            )

    async with db.tenant(cid) as conn:  # a closed trip and stop of that day too (the fixes above only drive on)
        first_vehicle = await conn.fetchval("SELECT id FROM vehicles LIMIT 1")
        old = now - dt.timedelta(days=3)
        await conn.execute(
            "INSERT INTO trips (customer_id, vehicle_id, start_time, end_time, start_lat, start_lng, end_lat, end_lng, "
            "distance_m, duration_s, max_speed, avg_speed, path) VALUES ($1, $2, $3, $4, 1, 1, 1, 1, 0, 60, 0, 0, '[]')",
            cid,
            first_vehicle,
            old - dt.timedelta(hours=2),
            old - dt.timedelta(hours=2) + dt.timedelta(minutes=1),
        )
        await conn.execute(
            "INSERT INTO stops (customer_id, vehicle_id, start_time, end_time, lat, lng, duration_s, confirmed_ms, "
            "state) VALUES ($1, $2, $3, $4, 1, 1, 60, 0, '{}')",
            cid,
            first_vehicle,
            old - dt.timedelta(hours=1),
            old - dt.timedelta(hours=1) + dt.timedelta(minutes=1),
        )

    def older(cutoff_sql: str) -> str:
        return f"SELECT count(*) FROM {cutoff_sql} < now() - interval '2 days'"

    aged = {t: await fleet.count(db, cid, older(q)) for t, q in _AGED.items()}
    assert all(aged.values()), aged  # the day 3 days ago made events, trips and stops
    removed = await retention.run_once(registry, "hobby", batch_rows=7)
    assert removed == {"positions": 25, "geofence_events": 2, "webhook_deliveries": 1, **aged}
    for q in _AGED.values():
        assert await fleet.count(db, cid, older(q)) == 0
    assert await fleet.count(db, keep_cid, older(_AGED["fleet_events"])) > 0  # a longer plan keeps them
    assert await fleet.count(db, cid, "SELECT count(*) FROM webhook_outbox WHERE status = 'pending'") == 1
    assert await fleet.count(db, cid, "SELECT count(*) FROM gps_positions") == 25
    assert await fleet.count(db, cid, "SELECT count(*) FROM geofence_events") == 2
    assert await fleet.count(db, keep_cid, "SELECT count(*) FROM gps_positions") == 50


async def test_float32_columns_come_back_as_recorded_in_json_csv_and_latest(db, server):
    """speed/heading/accuracy/altitude are stored as float32 (`real`): 1.36 must not come back as
    1.3600000143051147, nor a max speed of 18.52 km/h (5.144444 m/s) as 5.144444465637207 (issue 21)."""
    cid = await fleet.customer(db)
    vid = await fleet.vehicle(db, cid)
    registry = DatabaseRegistry(db)
    await registry.reload()
    day = START.date()
    recorded = [
        {"t": (START + dt.timedelta(hours=9, seconds=i)).isoformat(), "lat": 52.520008, "lng": 13.404954 + i * 1e-5}
        | {"speed": speed, "heading": 359.9, "accuracy": 4.7, "alt": 34.1}
        for i, speed in enumerate((1.36, 5.144444, 0.1))
    ]
    outcome = await Pipeline(registry).process(Batch(str(cid), vid, recorded, doc=f"tracks/{vid}/{day}", day=day))
    assert outcome.stored == 3
    key = await fleet.api_key(db, cid, ["tracking:read"])
    rng = {"from": START.isoformat(), "to": (START + dt.timedelta(days=1)).isoformat()}
    async with httpx.AsyncClient(base_url=server.base_url, headers=_h(key)) as http:
        r = await http.get(f"/api/v1/vehicles/{vid}/positions", params=rng)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [p["speed"] for p in data] == [1.36, 5.144444, 0.1]
        assert {(p["heading"], p["accuracy"], p["altitude"]) for p in data} == {(359.9, 4.7, 34.1)}
        assert '"speed":1.36,' in r.text.replace(" ", "") and "1.3600000143051147" not in r.text

        r = await http.get(f"/api/v1/vehicles/{vid}/positions", params={**rng, "format": "csv"})
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert [row["speed"] for row in rows] == ["1.36", "5.144444", "0.1"]
        assert {(row["heading"], row["accuracy"], row["altitude"]) for row in rows} == {("359.9", "4.7", "34.1")}
        assert rows[0]["lat"] == "52.520008" and rows[0]["lng"] == "13.404954"

        r = await http.get(f"/api/v1/vehicles/{vid}/daily-summary", params={"from": day.isoformat()})
        assert r.status_code == 200, r.text
        assert r.json()["data"][0]["max_speed"] == 5.144444

        r = await http.get("/api/v1/positions/latest")
        assert r.status_code == 200, r.text
        [latest] = [v for v in r.json()["data"] if v["vehicle_id"] == str(vid)]
        assert (latest["speed"], latest["accuracy"], latest["altitude"]) == (0.1, 4.7, 34.1), latest
