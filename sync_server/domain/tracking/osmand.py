"""The OsmAnd tracker protocol (spoken by the open-source Traccar Client and many hardware trackers),
decoded into track-document points so they enter the same pipeline.

Two forms (https://www.traccar.org/osmand/):
- query or form parameters: `id`/`deviceid`, `lat`, `lon` (or `location=lat,lon`), `timestamp`
  (epoch seconds or milliseconds, ISO-8601, or `yyyy-MM-dd HH:mm:ss`; absent = now), `speed` in
  KNOTS, `bearing`/`heading`, `altitude`, `accuracy`. Other parameters (batt, hdop, ...) are ignored.
- JSON (Traccar Client 9+): `{"device_id": ..., "location": {"timestamp": ISO, "coords":
  {"latitude", "longitude", "speed" (m/s), "heading", "altitude", "accuracy"}, ...}}`; `location`
  may also be a list of such objects.

Traccar Client keeps every position its server did not answer with 2xx and sends it again, first in
its queue: one refused position stops the phone's whole queue. So only a request that cannot be read
(no device id, a value that is not a number, unparseable JSON) is refused (OsmAndError -> 422); a
position that is readable but not a fix is counted as rejected and answered 200 like the pipeline's
own rejections: `no_fix` (no lat/lon: a cell or wifi only report, or a JSON location without coords)
and `invalid` (`valid=false`, the device's own verdict). A negative speed, bearing or accuracy means
"unknown" (the location SDKs' -1) on every path and is stored as absent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sync_server.domain.tracking.points import ms_from_datetime

KNOT_MPS = 1852 / 3600
SECONDS_BELOW = 100_000_000_000  # epoch values below this are seconds (1e11 s = year 5138; 1e11 ms = 1973)


NO_FIX = "no_fix"
INVALID = "invalid"


@dataclass
class Decoded:
    """What one request holds: the device's id, its fixes, and the positions rejected while reading."""

    device: str
    points: list[dict] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


class OsmAndError(ValueError):
    """The request cannot be read; `errors` lists (field, message)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))
        self.errors = errors


def _float(value: Any, field: str, errors: list, *, required: bool = False) -> float | None:
    if value is None or value == "":
        if required:
            errors.append((field, "required"))
        return None
    if isinstance(value, bool):
        errors.append((field, "must be a number"))
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        errors.append((field, "must be a number"))
        return None
    if number != number or number in (float("inf"), float("-inf")):
        errors.append((field, "must be finite"))
        return None
    return number


def _timestamp(value: Any, now_ms: int, errors: list) -> int | None:
    if value is None or value == "":
        return now_ms
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None and number == number and abs(number) != float("inf"):
        return int(number * 1000) if abs(number) < SECONDS_BELOW else int(number)
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        return ms_from_datetime(dt.datetime.fromisoformat(text))
    except ValueError:
        errors.append(("timestamp", "epoch seconds or milliseconds, ISO-8601 or yyyy-MM-dd HH:mm:ss"))
        return None


def _known(value: float | None) -> float | None:
    """Speed, bearing and accuracy below 0 mean "unknown" (-1 in Android's and iOS's location APIs)."""
    return None if value is None or value < 0 else value


def _point(
    ms: int,
    lat: float,
    lng: float,
    speed_mps: float | None,
    heading: float | None,
    alt: float | None,
    accuracy: float | None,
) -> dict[str, Any]:
    point: dict[str, Any] = {"t": ms, "lat": lat, "lng": lng}
    for key, value in (("speed", _known(speed_mps)), ("heading", _known(heading)), ("accuracy", _known(accuracy))):
        if value is not None:
            point[key] = value
    if alt is not None:
        point["alt"] = alt
    return point


def _valid(raw: str | None) -> bool:
    """Traccar's reading of `valid`: true unless given, then only `true` (any case) or `1`."""
    return raw is None or raw.strip().lower() == "true" or raw.strip() == "1"


def from_params(params: Mapping[str, str], now_ms: int) -> Decoded:
    """The device id and its fix (or why there is none) from query or form parameters."""
    errors: list[tuple[str, str]] = []
    device = params.get("id") or params.get("deviceid")
    if not device:
        errors.append(("id", "required (the vehicle_identifier)"))
    lat_raw, lon_raw = params.get("lat"), params.get("lon")
    if lat_raw is None and lon_raw is None and params.get("location"):
        lat_raw, _, lon_raw = params["location"].partition(",")
    lat = _float(lat_raw, "lat", errors)
    lng = _float(lon_raw, "lon", errors)
    knots = _float(params.get("speed"), "speed", errors)
    heading = _float(params.get("bearing", params.get("heading")), "bearing", errors)
    alt = _float(params.get("altitude"), "altitude", errors)
    accuracy = _float(params.get("accuracy"), "accuracy", errors)
    ms = _timestamp(params.get("timestamp"), now_ms, errors)
    if errors or ms is None:  # None only with an error listed
        raise OsmAndError(errors)
    decoded = Decoded(str(device))
    if lat is None or lng is None:
        decoded.reject(NO_FIX)
    elif not _valid(params.get("valid")):
        decoded.reject(INVALID)
    else:
        speed = knots * KNOT_MPS if knots is not None else None
        decoded.points.append(_point(ms, lat, lng, speed, heading, alt, accuracy))
    return decoded


def from_json(body: Any, now_ms: int) -> Decoded:
    """The device id and its fixes (and the locations that hold none) from a Traccar Client JSON body."""
    if not isinstance(body, dict):
        raise OsmAndError([("body", "must be a JSON object with location and device_id")])
    errors: list[tuple[str, str]] = []
    device = body.get("device_id")
    if not isinstance(device, (str, int)) or isinstance(device, bool) or device == "":
        errors.append(("device_id", "required (the vehicle_identifier)"))
    locations = body.get("location")
    if isinstance(locations, dict):
        locations = [locations]
    if not isinstance(locations, list) or not locations:
        errors.append(("location", "required: an object (or a list of objects) with timestamp and coords"))
        raise OsmAndError(errors)
    decoded = Decoded(str(device))
    for i, location in enumerate(locations):
        where = "location" if len(locations) == 1 else f"location.{i}"
        if not isinstance(location, dict):
            errors.append((where, "must be an object with timestamp and coords"))
            continue
        ts_errors: list[tuple[str, str]] = []
        ms = _timestamp(location.get("timestamp"), now_ms, ts_errors)
        coords = location.get("coords")
        if coords is None:  # a location without a fix (Traccar falls back to the last one)
            errors += [(f"{where}.{f}", m) for f, m in ts_errors]
            if not ts_errors:
                decoded.reject(NO_FIX)
            continue
        if not isinstance(coords, dict):
            errors.append((f"{where}.coords", "must be an object with latitude and longitude"))
            continue
        sub: list[tuple[str, str]] = []
        lat = _float(coords.get("latitude"), "latitude", sub, required=True)
        lng = _float(coords.get("longitude"), "longitude", sub, required=True)
        speed = _float(coords.get("speed"), "speed", sub)
        heading = _float(coords.get("heading"), "heading", sub)
        alt = _float(coords.get("altitude"), "altitude", sub)
        accuracy = _float(coords.get("accuracy"), "accuracy", sub)
        errors += [(f"{where}.coords.{f}", m) for f, m in sub] + [(f"{where}.{f}", m) for f, m in ts_errors]
        if not sub and not ts_errors and ms is not None and lat is not None and lng is not None:
            decoded.points.append(_point(ms, lat, lng, speed, heading, alt, accuracy))
    if errors:
        raise OsmAndError(errors)
    return decoded
