"""Tracker HTTP ingestion (OsmAnd protocol) against a real server process and real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import time

import httpx

from .support import fleet

UTC = dt.UTC
SECRET = "whd_device-secret-for-truck-1"


async def _setup(db):
    slug = f"acme-{int(time.time() * 1000) % 100000}"
    cid = await fleet.customer(db, slug)
    vid = await fleet.vehicle(db, cid, "truck-1", fleet.secret_hash(SECRET))
    return slug, cid, vid


async def test_osmand_query_form_and_post_form(db, server):
    slug, cid, vid = await _setup(db)
    now = int(time.time())
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        # GET with query parameters (OsmAnd / Traccar Client before 9): speed in knots, epoch seconds
        r = await http.get(
            f"/ingest/osmand/{slug}",
            params={
                "id": "truck-1",
                "key": SECRET,
                "lat": "52.5",
                "lon": "13.4",
                "timestamp": str(now - 20),
                "speed": "10",
                "bearing": "90",
                "altitude": "35",
                "accuracy": "5",
                "batt": "80",
                "hdop": "0.8",
            },
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"accepted": 1, "rejected": {}}
        # POST form body on the bare path: the device key alone finds the vehicle; time in ms
        r = await http.post(
            "/ingest/osmand",
            params={"key": SECRET},
            data={"deviceid": "truck-1", "lat": "52.5001", "lon": "13.4001", "timestamp": str((now - 10) * 1000)},
        )
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        # ISO timestamp and a fix the filters reject: counted, answered 200 so the tracker does not resend
        r = await http.get(
            "/ingest/osmand",
            params={
                "id": "truck-1",
                "key": SECRET,
                "lat": "0",
                "lon": "0",
                "timestamp": dt.datetime.now(UTC).isoformat(),
            },
        )
        assert r.status_code == 200 and r.json() == {"accepted": 0, "rejected": {"null_island": 1}}
    rows = await fleet.rows(db, cid, "SELECT * FROM gps_positions ORDER BY time")
    assert [(r["lat"], r["source"]) for r in rows] == [(52.5, "osmand"), (52.5001, "osmand")]
    assert rows[0]["time"] == dt.datetime.fromtimestamp(now - 20, UTC)
    assert abs(rows[0]["speed"] - 10 * 1852 / 3600) < 1e-3  # knots -> m/s
    assert (rows[0]["heading"], rows[0]["altitude"], rows[0]["accuracy"]) == (90, 35, 5)
    latest = await fleet.rows(db, cid, "SELECT lat FROM vehicle_positions_latest")
    assert latest[0]["lat"] == 52.5001


async def test_osmand_traccar_client_json_body(db, server):
    slug, cid, vid = await _setup(db)
    now = dt.datetime.now(UTC).replace(microsecond=0)

    def location(seconds_ago, lat, speed):
        return {
            "timestamp": (now - dt.timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z"),
            "coords": {
                "latitude": lat,
                "longitude": 13.4,
                "accuracy": 8,
                "speed": speed,
                "heading": -1,
                "altitude": 40,
            },
            "is_moving": True,
            "odometer": 0,
            "event": "motionchange",
            "battery": {"level": 0.5, "is_charging": False},
            "activity": {"type": "in_vehicle"},
            "extras": {},
        }

    async with httpx.AsyncClient(base_url=server.base_url) as http:
        body = {"location": location(30, 52.5, 4.5), "device_id": "truck-1"}
        r = await http.post(f"/ingest/osmand/{slug}", json=body, headers={"Authorization": f"Bearer {SECRET}"})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        # a list of locations (a client flushing its offline queue)
        body = {"location": [location(20, 52.5002, 5.0), location(10, 52.5004, 5.5)], "device_id": "truck-1"}
        r = await http.post("/ingest/osmand", json=body, params={"key": SECRET})
        assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    rows = await fleet.rows(db, cid, "SELECT * FROM gps_positions ORDER BY time")
    assert [(r["time"], r["speed"], r["heading"]) for r in rows] == [
        (now - dt.timedelta(seconds=30), 4.5, None),
        (now - dt.timedelta(seconds=20), 5.0, None),
        (now - dt.timedelta(seconds=10), 5.5, None),
    ]


async def test_osmand_refusals(db, server):
    slug, cid, vid = await _setup(db)
    good = {"id": "truck-1", "lat": "52.5", "lon": "13.4"}
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        r = await http.get(f"/ingest/osmand/{slug}", params=good)
        assert r.status_code == 401 and r.json()["error"]["code"] == "device_key_required"
        for path, params in (
            (f"/ingest/osmand/{slug}", {**good, "key": "wrong"}),
            (f"/ingest/osmand/{slug}", {**good, "id": "truck-2", "key": SECRET}),
            ("/ingest/osmand/nobody-here", {**good, "key": SECRET}),
            ("/ingest/osmand", {**good, "id": "truck-2", "key": SECRET}),
        ):
            r = await http.get(path, params=params)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unknown_device", (path, params, r.text)
        r = await http.get(f"/ingest/osmand/{slug}", params={"id": "truck-1", "key": SECRET, "lon": "x"})
        assert r.status_code == 422
        fields = {e["field"] for e in r.json()["error"]["details"]["errors"]}
        assert fields == {"lon"}  # not a number: unreadable (a missing lat is a position without a fix)
        r = await http.post(
            f"/ingest/osmand/{slug}",
            params={"key": SECRET},
            json={"device_id": "truck-1", "location": {"coords": {"latitude": 1}}},
        )
        assert r.status_code == 422
        assert r.json()["error"]["details"]["errors"][0]["field"] == "location.coords.longitude"
        r = await http.post(
            f"/ingest/osmand/{slug}",
            params={"key": SECRET},
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_json"
    assert await fleet.count(db, cid, "SELECT count(*) FROM gps_positions") == 0


async def test_osmand_answers_200_for_every_readable_position_so_no_queue_sticks(db, server):
    """Traccar Client resends every position not answered 2xx, first in its queue: no fix (cell or
    wifi only), valid=false, duplicates and over quota are all 200 with a count per reason; form
    bodies are read whatever their Content-Type; -1 speed/bearing are unknown on the query, form and
    JSON paths (issue 15 item 6)."""
    plan = await fleet.plan(db, f"three-a-day-{int(time.time() * 1000) % 100000}", points_per_day=3)
    slug = f"queue-{int(time.time() * 1000) % 100000}"
    cid = await fleet.customer(db, slug, plan)
    await fleet.vehicle(db, cid, "truck-1", fleet.secret_hash(SECRET))
    now = int(time.time())
    key = {"Authorization": f"Bearer {SECRET}"}
    url = f"/ingest/osmand/{slug}"
    async with httpx.AsyncClient(base_url=server.base_url, headers=key) as http:

        async def answer(r) -> dict:
            assert r.status_code == 200, r.text
            return r.json()

        # no lat/lon: a cell/wifi-only report (query) and a JSON location without coords
        cell = {"id": "truck-1", "timestamp": str(now - 100), "cell": "257,02,16,2224", "wifi": "00-14-22-01-23-45,-80"}
        assert await answer(await http.get(url, params=cell)) == {"accepted": 0, "rejected": {"no_fix": 1}}
        mixed = {
            "device_id": "truck-1",
            "location": [
                {"timestamp": dt.datetime.fromtimestamp(now - 90, UTC).isoformat(), "is_moving": False},
                {
                    "timestamp": dt.datetime.fromtimestamp(now - 80, UTC).isoformat(),
                    "coords": {"latitude": 52.5, "longitude": 13.4, "speed": -1, "heading": -1, "accuracy": 5},
                },
            ],
        }
        assert await answer(await http.post(url, json=mixed)) == {"accepted": 1, "rejected": {"no_fix": 1}}
        # valid=false is the device's own verdict: rejected (Traccar: valid unless true or 1)
        for flag in ("false", "0", "no"):
            fix = {"id": "truck-1", "lat": "52.51", "lon": "13.41", "timestamp": str(now - 70), "valid": flag}
            assert await answer(await http.get(url, params=fix)) == {"accepted": 0, "rejected": {"invalid": 1}}
        # a form body sent as text/plain, then with no Content-Type at all; speed/bearing -1 unknown
        form = f"id=truck-1&lat=52.502&lon=13.402&timestamp={now - 60}&speed=-1&bearing=-1&valid=true"
        r = await http.post(url, content=form, headers={"Content-Type": "text/plain"})
        assert await answer(r) == {"accepted": 1, "rejected": {}}
        form = f"id=truck-1&lat=52.503&lon=13.403&timestamp={now - 50}&speed=-1&heading=-1&valid=1"
        r = await http.post(url, content=form.encode(), headers={"Content-Type": ""})
        assert await answer(r) == {"accepted": 1, "rejected": {}}
        # the same form again: a duplicate, still 200
        r = await http.post(url, content=form.encode(), headers={"Content-Type": ""})
        assert await answer(r) == {"accepted": 0, "rejected": {"duplicate": 1}}
        # the plan's 3 points of the day are used: over quota is 200 too
        over = {"id": "truck-1", "lat": "52.504", "lon": "13.404", "timestamp": str(now - 40), "speed": "-1"}
        assert await answer(await http.get(url, params=over)) == {"accepted": 0, "rejected": {"quota_exceeded": 1}}
        # unreadable input is still refused: a number that is not one
        r = await http.post(url, content=b"id=truck-1&lat=north&lon=13.4", headers={"Content-Type": "text/plain"})
        assert r.status_code == 422 and [e["field"] for e in r.json()["error"]["details"]["errors"]] == ["lat"]
    rows = await fleet.rows(db, cid, "SELECT lat, speed, heading, accuracy FROM gps_positions ORDER BY time")
    assert [tuple(r) for r in rows] == [(52.5, None, None, 5.0), (52.502, None, None, None), (52.503, None, None, None)]
