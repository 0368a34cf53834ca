"""Fleet reports and event thresholds over REST (api/reports.py), on rows the real pipeline wrote."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid

from sync_server.domain.tracking.pipeline import Batch

from ..test_fleet_events import NOW, SETTINGS, _track
from .conftest import error_of

DAY = [
    ("park", 12, 30),
    ("drive", 40, 15, 50, 90, True),
    ("drive", 6, 10, 90, 90, True),  # overspeed at the customer's 60 km/h
    ("park", 12, 30),
    ("drive", 20, 15, 30, 180, True),
    ("park", 12, 30),
]


async def _vehicle(api, c, name):
    r = await api.post("/api/v1/vehicles", headers=c.auth, json={"name": name, "vehicle_identifier": name})
    assert r.status_code == 201, await r.get_data(as_text=True)
    return (await r.get_json())["id"]


async def _fleet(api):
    c = await api.customer()
    r = await api.put("/api/v1/tracking/event-settings", headers=c.auth, json=SETTINGS)
    assert r.status_code == 200, await r.get_data(as_text=True)
    vehicles = [await _vehicle(api, c, f"van-{i}") for i in range(2)]
    for vid in vehicles:
        await api.runtime.tracking.process(Batch(c.id, uuid.UUID(vid), _track(DAY), source="osmand"), now=NOW)
    return c, vehicles


RANGE = {"from": (NOW - dt.timedelta(days=3)).isoformat(), "to": NOW.isoformat()}


async def test_trips_stops_events_and_summary_per_vehicle_and_fleet(api):
    c, (v1, v2) = await _fleet(api)
    r = await api.get("/api/v1/reports/trips", headers=c.auth, query_string={**RANGE, "vehicle_id": v1})
    trips = (await r.get_json())["data"]
    assert r.status_code == 200 and len(trips) == 2 and {t["vehicle_id"] for t in trips} == {v1}
    assert trips[0]["end_time"] and trips[0]["max_speed_kmh"] == 90.0 and len(trips[0]["path"]) >= 2
    # the fleet, one row a page, cursor to the end
    seen, cursor = [], None
    while True:
        q = {**RANGE, "limit": 1, **({"cursor": cursor} if cursor else {})}
        page = await (await api.get("/api/v1/reports/trips", headers=c.auth, query_string=q)).get_json()
        seen += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 4 and {t["vehicle_id"] for t in seen} == {v1, v2}
    r = await api.get("/api/v1/reports/stops", headers=c.auth, query_string={**RANGE, "format": "csv"})
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await r.get_data(as_text=True))))
    assert len(rows) == 6 and set(rows[0]) == {"vehicle_id", "start_time", "end_time", "lat", "lng", "duration_s"}
    r = await api.get(
        "/api/v1/reports/events", headers=c.auth, query_string={**RANGE, "type": "overspeed.started,trip.ended"}
    )
    events = (await r.get_json())["data"]
    assert sorted(e["type"] for e in events) == ["overspeed.started"] * 2 + ["trip.ended"] * 4
    over = next(e for e in events if e["type"] == "overspeed.started")
    assert over["data"]["max_speed_kmh"] == 90.0 and over["data"]["limit_kmh"] == 60.0
    r = await api.get("/api/v1/reports/summary", headers=c.auth, query_string=RANGE)
    summary = await r.get_json()
    assert r.status_code == 200 and len(summary["vehicles"]) == 2
    one = summary["vehicles"][0]
    assert one["trips"] == 2 and one["stops"] == 3 and one["overspeed_count"] == 1
    assert one["distance_m"] > 3000 and one["moving_s"] > 600 and one["stopped_s"] >= 600
    assert abs(one["avg_speed_kmh"] - one["distance_m"] / one["moving_s"] * 3.6) < 0.02  # distance is rounded
    fleet = summary["fleet"]
    assert fleet["trips"] == 4 and fleet["overspeed_count"] == 2
    assert abs(fleet["distance_m"] - sum(v["distance_m"] for v in summary["vehicles"])) < 0.11
    csv_summary = await api.get("/api/v1/reports/summary", headers=c.auth, query_string={**RANGE, "format": "csv"})
    assert len(list(csv.DictReader(io.StringIO(await csv_summary.get_data(as_text=True))))) == 2
    # a range that cuts a trip counts the part inside it
    first = trips[0]
    start = dt.datetime.fromisoformat(first["start_time"])
    half = start + dt.timedelta(seconds=first["duration_s"] / 2)
    q = {"from": (start - dt.timedelta(seconds=1)).isoformat(), "to": half.isoformat(), "vehicle_id": v1}
    part = (await (await api.get("/api/v1/reports/summary", headers=c.auth, query_string=q)).get_json())["fleet"]
    assert abs(part["moving_s"] - first["duration_s"] / 2) < 1.5


async def test_settings_validation_isolation_and_bad_queries(api):
    c, (v1, _) = await _fleet(api)
    other = await api.customer()
    r = await api.get("/api/v1/tracking/event-settings", headers=other.auth)
    assert (await r.get_json())["min_stop_s"] == 300.0  # the defaults
    r = await api.get("/api/v1/tracking/event-settings", headers=c.auth)
    assert (await r.get_json())["min_stop_s"] == 120.0
    for bad in ({"min_stop_s": 1}, {"stop_radius_m": "far"}, {"offline_after_s": 1e12}, {"surprise": 1}):
        r = await api.put("/api/v1/tracking/event-settings", headers=c.auth, json=bad)
        assert r.status_code == 422, bad
    reader = await api.key(c, ["tracking:read"])
    r = await api.put("/api/v1/tracking/event-settings", headers={"Authorization": f"Bearer {reader}"}, json={})
    assert r.status_code == 403
    # another customer sees none of it, and not the vehicle
    for path in ("trips", "stops", "events"):
        r = await api.get(f"/api/v1/reports/{path}", headers=other.auth, query_string=RANGE)
        assert (await r.get_json())["data"] == []
    r = await api.get("/api/v1/reports/trips", headers=other.auth, query_string={**RANGE, "vehicle_id": v1})
    assert r.status_code == 404
    assert (await (await api.get("/api/v1/reports/summary", headers=other.auth)).get_json())["vehicles"] == []
    for q in (
        {"from": NOW.isoformat(), "to": (NOW - dt.timedelta(days=1)).isoformat()},
        {"from": "2020-01-01T00:00:00Z", "to": "2022-01-01T00:00:00Z"},
        {"cursor": "not-a-cursor"},
        {"limit": 0},
        {"format": "xml"},
    ):
        r = await api.get("/api/v1/reports/trips", headers=c.auth, query_string=q)
        assert r.status_code == 422, q
        assert (await error_of(r))["code"]
    r = await api.get("/api/v1/reports/events", headers=c.auth, query_string={"type": "trip.exploded"})
    assert r.status_code == 422
