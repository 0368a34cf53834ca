"""Position exports, written as they are read (pages of rows in, text chunks out): a day of
2-second fixes never sits in memory as one document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from sync_server.sync import strict_json

FIELDS = ("time", "lat", "lng", "speed", "heading", "accuracy", "altitude")
MIMETYPES = {"geojson": "application/geo+json", "csv": "text/csv; charset=utf-8", "gpx": "application/gpx+xml"}
EXTENSIONS = {"geojson": "geojson", "csv": "csv", "gpx": "gpx"}


def position_json(row: Any) -> dict:
    out = {"time": row["time"].isoformat().replace("+00:00", "Z"), "lat": row["lat"], "lng": row["lng"]}
    for name in FIELDS[3:]:
        out[name] = row[name]
    return out


async def geojson(pages: AsyncIterator[list], vehicle: dict) -> AsyncIterator[str]:
    yield '{"type":"FeatureCollection","properties":' + strict_json.dumps(vehicle) + ',"features":['
    first = True
    async for rows in pages:
        parts = []
        for row in rows:
            props = position_json(row)
            feature = {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [row["lng"], row["lat"]]},
                "properties": {k: v for k, v in props.items() if k not in ("lat", "lng")},
            }
            parts.append(strict_json.dumps(feature, separators=(",", ":")))
        if parts:
            yield ("" if first else ",") + ",".join(parts)
            first = False
    yield "]}"


def _csv_value(value: Any) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


async def csv(pages: AsyncIterator[list]) -> AsyncIterator[str]:
    yield ",".join(FIELDS) + "\r\n"
    async for rows in pages:
        yield "".join(
            row["time"].isoformat().replace("+00:00", "Z")
            + ","
            + ",".join(_csv_value(row[name]) for name in FIELDS[1:])
            + "\r\n"
            for row in rows
        )


async def gpx(pages: AsyncIterator[list], name: str) -> AsyncIterator[str]:
    yield (
        '<?xml version="1.0" encoding="UTF-8"?>\n<gpx version="1.1" creator="webhost-sync" '
        'xmlns="http://www.topografix.com/GPX/1/1">\n<trk><name>' + escape(name) + "</name><trkseg>\n"
    )
    async for rows in pages:
        parts = []
        for row in rows:
            ele = f"<ele>{row['altitude']}</ele>" if row["altitude"] is not None else ""
            when = row["time"].isoformat().replace("+00:00", "Z")
            parts.append(
                f"<trkpt lat={quoteattr(repr(row['lat']))} lon={quoteattr(repr(row['lng']))}>"
                f"{ele}<time>{when}</time></trkpt>\n"
            )
        yield "".join(parts)
    yield "</trkseg></trk>\n</gpx>\n"
