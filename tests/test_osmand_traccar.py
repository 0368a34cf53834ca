"""OsmAnd against Traccar's own test vectors (issue 15 item 6).

Every request of Traccar's OsmAndProtocolDecoderTest (src/test/java/org/traccar/protocol/, kept here
verbatim) is decoded with the values Traccar's OsmAndProtocolDecoder computes for it (read from its
source: query `speed` in knots, JSON `speed` in m/s which Traccar turns into knots; a negative JSON
speed or heading is left unset; `lat`/`lon` or `location=lat,lon`; a timestamp below 2^31 is
seconds), in our units (m/s). Then each request goes to a real server: as recorded (their dates are
years old: counted `too_old`, answered 200), and with the timestamp moved to the last hour in the
same notation, when every fix must be stored with those values.

One difference on purpose: `timestamp=2014-06-04 09:10:11` (no zone) is UTC here; Traccar reads it in
its server's zone.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from urllib.parse import parse_qs, quote

import httpx
import pytest

from sync_server.domain.tracking import osmand

from .support import fleet

UTC = dt.UTC
KNOT = 1852 / 3600

# (request target as in OsmAndProtocolDecoderTest.testDecodeQuery, expected): a dict of Traccar's
# decoded values (time: epoch ms, None = the time of the request), "no_fix" (verifyNotNull of a
# position without coordinates: Traccar takes the device's last location) or "no_device" (verifyNull).
QUERIES: list[tuple[str, object]] = [
    (
        "/?id=123456&timestamp=1377177267&cell=257,02,16,2224&cell=257,02,16,2223,-90"
        "&wifi=00-14-22-01-23-45,-80&wifi=00-1C-B3-09-85-15,-70",
        "no_fix",
    ),
    ("/?timestamp=1377177267&lat=60.0&lon=30.0", "no_device"),
    (
        "/?id=902064&lat=42.06288&lon=-88.23412&timestamp=2016-01-27T18%3A55%3A47Z&hdop=6.0&altitude=224.0&speed=0.0",
        {"id": "902064", "t": 1453920947000, "lat": 42.06288, "lng": -88.23412, "speed": 0.0, "alt": 224.0},
    ),
    (
        "/?id=902064&lat=42.06288&lon=-88.23412&timestamp=1442068686579&hdop=6.0&altitude=224.0&speed=0.0",
        {"id": "902064", "t": 1442068686579, "lat": 42.06288, "lng": -88.23412, "speed": 0.0, "alt": 224.0},
    ),
    (
        "/?lat=49.60688&lon=6.15788&timestamp=2014-06-04+09%3A10%3A11&altitude=384.7&speed=0.0&id=353861053849681",
        {"id": "353861053849681", "t": 1401873011000, "lat": 49.60688, "lng": 6.15788, "speed": 0.0, "alt": 384.7},
    ),
    (
        "/?id=123456&timestamp=1377177267&lat=60.0&lon=30.0&speed=0.0&bearing=0.0&altitude=0&hdop=0.0",
        {"id": "123456", "t": 1377177267000, "lat": 60.0, "lng": 30.0, "speed": 0.0, "heading": 0.0, "alt": 0.0},
    ),
    (
        "/?id=123456&timestamp=1377177267&lat=60.0&lon=30.0",
        {"id": "123456", "t": 1377177267000, "lat": 60.0, "lng": 30.0},
    ),
    (
        "/?lat=60.0&lon=30.0&speed=0.0&heading=0.0&vacc=0&hacc=0&altitude=0&deviceid=123456",
        {"id": "123456", "t": None, "lat": 60.0, "lng": 30.0, "speed": 0.0, "heading": 0.0, "alt": 0.0},
    ),
    (
        "/?id=861001000719969&lat=41.666667&lon=-0.883333&altitude=350.059479&speed=0.000000&batt=87",
        {"id": "861001000719969", "t": None, "lat": 41.666667, "lng": -0.883333, "speed": 0.0, "alt": 350.059479},
    ),
    (
        "/?id=123456&timestamp=1377177267&location=60.0,30.0",
        {"id": "123456", "t": 1377177267000, "lat": 60.0, "lng": 30.0},
    ),
    (
        "/?id=123456789012345&timestamp=1504763810&lat=40.7232948571&lon=-74.0061408571&bearing=7.19889788244"
        "&speed=40&ignition=true&rpm=933&fuel=24",
        {
            "id": "123456789012345",
            "t": 1504763810000,
            "lat": 40.7232948571,
            "lng": -74.0061408571,
            "speed": 40 * KNOT,
            "heading": 7.19889788244,
        },
    ),
]

# The bodies of OsmAndProtocolDecoderTest.testDecodeJson, verbatim, with Traccar's decoded values.
JSON_BODIES: list[tuple[str, dict]] = [
    (
        '{"location":{"timestamp":"2025-06-15T13:45:12.862Z","coords":{"latitude":37.4219983,"longitude":-122.084,'
        '"accuracy":5,"speed":0,"heading":-1,"altitude":5},"is_moving":false,"odometer":0,"event":"motionchange",'
        '"battery":{"level":1,"is_charging":false},"activity":{"type":"still"},"extras":{},'
        '"_":"&id=48241179&lat=37.4219983&lon=-122.084&timestamp=2025-06-15T13:45:12.862Z&"},"device_id":"48241179"}',
        {"id": "48241179", "t": 1749995112862, "lat": 37.4219983, "lng": -122.084, "speed": 0.0, "accuracy": 5.0}
        | {"alt": 5.0},
    ),
    (
        '{"location":{"timestamp":"2025-06-15T13:45:12.862Z","coords":{"latitude":37.4219983,"longitude":-122.084,'
        '"accuracy":5,"speed":0,"heading":-1,"altitude":5},"is_moving":false,"odometer":0,"event":"motionchange",'
        '"battery":{"level":1,"is_charging":false},"activity":{"type":"still"},"extras":{"device_string_test":'
        '"long_device_id","device_bool_test":true,"device_bool_false_test":false,"device_integer_test":1,'
        '"device_integer_twelve_test":12,"device_double_test":1.345,"device_very_long_double_test":1763636.3442},'
        '"_":"&id=48241179&lat=37.4219983&lon=-122.084&timestamp=2025-06-15T13:45:12.862Z&"},"device_id":"48241179"}',
        {"id": "48241179", "t": 1749995112862, "lat": 37.4219983, "lng": -122.084, "speed": 0.0, "accuracy": 5.0}
        | {"alt": 5.0},
    ),
    (
        '{"location":{"extras":{},"mock":true,"coords":{"speed_accuracy":-1,"speed":-1,"longitude":-122.406417,'
        '"ellipsoidal_altitude":0,"floor":null,"heading_accuracy":-1,"latitude":37.785834000000001,"accuracy":5,'
        '"altitude_accuracy":-1,"altitude":0,"heading":-1},"is_moving":false,"age":188,"odometer":0,'
        '"uuid":"2FB04C65-99CF-42AB-8DD3-EBCB4B108BF8","event":"motionchange","battery":{"level":-1,'
        '"is_charging":false},"activity":{"type":"unknown","confidence":100},"timestamp":"2025-05-09T04:11:30.579Z"},'
        '"device_id":"658765"}',
        {"id": "658765", "t": 1746763890579, "lat": 37.785834, "lng": -122.406417, "accuracy": 5.0, "alt": 0.0},
    ),
    (
        '{"location":{"event":"motionchange","is_moving":false,"uuid":"0e9a2473-a9a7-4c00-997b-fb97d2154e75",'
        '"timestamp":"2021-07-21T08:06:34.444Z","odometer":0,"coords":{"latitude":-6.1148096,"longitude":106.6837015,'
        '"accuracy":3.8,"speed":18.67,"speed_accuracy":0.26,"heading":63,"heading_accuracy":0.28,"altitude":35.7,'
        '"altitude_accuracy":3.8},"activity":{"type":"still","confidence":100},"battery":{"is_charging":false,'
        '"level":0.79},"extras":{}},"device_id":"8737767034"}',
        {"id": "8737767034", "t": 1626854794444, "lat": -6.1148096, "lng": 106.6837015, "speed": 18.67}
        | {"heading": 63.0, "accuracy": 3.8, "alt": 35.7},
    ),
]

DEVICES = sorted({e["id"] for _, e in QUERIES if isinstance(e, dict)} | {e["id"] for _, e in JSON_BODIES} | {"123456"})


def _params(target: str) -> dict[str, str]:
    """The parameters as the endpoint reads them (the first of repeated ones, `+` as a space)."""
    return {key: values[0] for key, values in parse_qs(target.split("?", 1)[1], keep_blank_values=True).items()}


def _point(expected: dict, now_ms: int) -> dict:
    return {k: v for k, v in expected.items() if k != "id"} | {"t": expected["t"] or now_ms}


@pytest.mark.parametrize("target, expected", QUERIES, ids=[f"query{i}" for i in range(len(QUERIES))])
def test_every_traccar_query_decodes_to_traccars_values(target, expected):
    now_ms = 1_800_000_000_000
    if expected == "no_device":
        with pytest.raises(osmand.OsmAndError) as refused:
            osmand.from_params(_params(target), now_ms)
        assert [field for field, _ in refused.value.errors] == ["id"]
        return
    decoded = osmand.from_params(_params(target), now_ms)
    if expected == "no_fix":
        assert decoded.device == "123456" and decoded.points == [] and decoded.rejected == {"no_fix": 1}
        return
    assert isinstance(expected, dict) and decoded.device == expected["id"]
    [point] = decoded.points
    assert point == pytest.approx(_point(expected, now_ms)) and point.keys() == _point(expected, now_ms).keys()
    assert decoded.rejected == {}


@pytest.mark.parametrize("body, expected", JSON_BODIES, ids=[f"json{i}" for i in range(len(JSON_BODIES))])
def test_every_traccar_json_body_decodes_to_traccars_values(body, expected):
    decoded = osmand.from_json(json.loads(body), 1_800_000_000_000)
    assert decoded.device == expected["id"] and decoded.rejected == {}
    [point] = decoded.points
    assert point == pytest.approx(_point(expected, 0)) and point.keys() == _point(expected, 0).keys()


def _recent(target: str, when: dt.datetime) -> str:
    """The request with its timestamp moved to `when`, in the notation it had."""

    def moved(match: re.Match) -> str:
        value = match.group(1)
        if value.isdigit():
            seconds = when.timestamp()
            return "timestamp=" + (str(int(seconds * 1000)) if len(value) > 10 else str(int(seconds)))
        if "T" in value:
            return "timestamp=" + quote(when.strftime("%Y-%m-%dT%H:%M:%SZ"))
        return "timestamp=" + quote(when.strftime("%Y-%m-%d %H:%M:%S")).replace("%20", "+")

    return re.sub(r"timestamp=([^&]*)", moved, target)


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


async def _fleet(db):
    slug = f"traccar-{int(time.time() * 1000) % 100000}"
    cid = await fleet.customer(db, slug)
    vehicles = {}
    for identifier in DEVICES:
        vehicles[identifier] = await fleet.vehicle(db, cid, identifier, fleet.secret_hash(f"whd_key-{identifier}"))
    return slug, cid, vehicles


def _key(identifier: str) -> dict:
    return {"Authorization": f"Bearer whd_key-{identifier}"}


async def _stored(db, cid, vehicles) -> list[tuple]:
    rows = await fleet.rows(
        db,
        cid,
        "SELECT vehicle_id, time, lat, lng, speed, heading, accuracy, altitude FROM gps_positions ORDER BY time",
    )
    by_id = {v: k for k, v in vehicles.items()}
    return [(by_id[r["vehicle_id"]], *r[1:]) for r in rows]


def _row(expected: dict, at_ms: int) -> tuple:
    return (
        expected["id"],
        dt.datetime.fromtimestamp(at_ms / 1000, UTC),
        expected["lat"],
        expected["lng"],
        expected.get("speed"),
        expected.get("heading"),
        expected.get("accuracy"),
        expected.get("alt"),
    )


def _same(stored: tuple, expected: tuple) -> bool:
    """Equal, float32 columns (speed .. altitude) to their float32 precision."""
    if stored[:4] != expected[:4]:
        return False
    for got, want in zip(stored[4:], expected[4:], strict=True):
        if (got is None) != (want is None) or (got is not None and abs(got - want) > 1e-4 * max(1.0, abs(want))):
            return False
    return True


async def test_every_traccar_request_is_answered_and_stored_with_traccars_values(db, server):
    slug, cid, vehicles = await _fleet(db)
    async with httpx.AsyncClient(base_url=server.base_url) as http:

        async def send(target: str, identifier: str):
            return await http.get(f"/ingest/osmand/{slug}" + target[1:], headers=_key(identifier))

        # 1. As recorded: years old. Every readable request is 200, what was not stored is counted.
        undated = []
        for target, expected in QUERIES:
            if expected == "no_device":
                r = await send(target, "123456")
                assert r.status_code == 422, r.text
                assert [e["field"] for e in r.json()["error"]["details"]["errors"]] == ["id"]
                continue
            identifier = "123456" if expected == "no_fix" else expected["id"]
            before = _ms(dt.datetime.now(UTC))
            r = await send(target, identifier)
            assert r.status_code == 200, (target, r.text)
            if expected == "no_fix":
                assert r.json() == {"accepted": 0, "rejected": {"no_fix": 1}}
            elif expected["t"] is None:  # no timestamp: the time of the request
                assert r.json() == {"accepted": 1, "rejected": {}}, target
                undated.append((expected, before, _ms(dt.datetime.now(UTC))))
            else:
                assert r.json() == {"accepted": 0, "rejected": {"too_old": 1}}, target
        for body, expected in JSON_BODIES:
            r = await http.post(
                f"/ingest/osmand/{slug}",
                content=body,
                headers={"Content-Type": "application/json", **_key(expected["id"])},
            )
            assert r.status_code == 200 and r.json() == {"accepted": 0, "rejected": {"too_old": 1}}, r.text
        stored = await _stored(db, cid, vehicles)
        assert len(stored) == len(undated) == 2
        for row, (expected, lo, hi) in zip(stored, undated, strict=True):
            at = _ms(row[1])
            assert lo - 1000 <= at <= hi + 1000 and _same(row, _row(expected, at)), (row, expected)

        # 2. The same requests with their timestamps moved into the last hour, in the same notation:
        # all stored, with Traccar's values; the second JSON body repeats the first (a duplicate).
        base = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(minutes=50)
        wanted = [_row(expected, _ms(row[1])) for row, (expected, _, _) in zip(stored, undated, strict=True)]
        for i, (target, expected) in enumerate(QUERIES):
            if not isinstance(expected, dict) or expected["t"] is None:
                continue
            when = base + dt.timedelta(minutes=i)
            r = await send(_recent(target, when), expected["id"])
            assert r.status_code == 200 and r.json() == {"accepted": 1, "rejected": {}}, (target, r.text)
            wanted.append(_row(expected, _ms(when)))
        for i, (body, expected) in enumerate(JSON_BODIES):
            when = base + dt.timedelta(minutes=30 + (i if i != 1 else 0), milliseconds=expected["t"] % 1000)
            moved = re.sub(
                r'"timestamp":"[^"]*"', '"timestamp":"' + when.isoformat(timespec="milliseconds")[:-6] + 'Z"', body
            )
            r = await http.post(f"/ingest/osmand/{slug}", content=moved, headers=_key(expected["id"]))
            if i == 1:
                assert r.status_code == 200 and r.json() == {"accepted": 0, "rejected": {"duplicate": 1}}, r.text
                continue
            assert r.status_code == 200 and r.json() == {"accepted": 1, "rejected": {}}, r.text
            wanted.append(_row(expected, _ms(when)))
    stored = await _stored(db, cid, vehicles)
    wanted.sort(key=lambda row: row[1])
    assert len(stored) == len(wanted)
    for got, want in zip(stored, wanted, strict=True):
        assert _same(got, want), (got, want)
