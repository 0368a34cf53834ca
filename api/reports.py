"""Fleet reports (API key with tracking:read) from the rows the tracking pipeline maintains —
trips, stops, fleet events — never from raw positions: trips, stops and events over a range of
days (json paged by cursor, csv streamed), and a summary per vehicle and for the fleet (distance,
moving and stopped time, max/avg speed, overspeed count). The event thresholds per customer:
GET/PUT /api/v1/tracking/event-settings (fleet:write to change them)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from pydantic import Field
from quart import Blueprint, Response

from storage import fleet_events as store
from sync_server.domain.tracking import overspeed
from sync_server.domain.tracking.fleet_events import EVENT_TYPES
from sync_server.domain.tracking.thresholds import Thresholds

from . import pagination
from .auth import customer_required
from .openapi import field_error, operation
from .schemas import RequestModel, ResponseModel
from .tracking import IsoDatetime, Query, _customer_db, _utc, _vehicle

blueprint = Blueprint("reports", __name__)
TAGS = ["reports"]
UTC = dt.UTC
DEFAULT_DAYS = 7
MAX_DAYS = 366
PAGE_ROWS = 1_000
CSV = "text/csv; charset=utf-8"


class RangeQuery(Query):
    vehicle_id: uuid.UUID | None = Field(None, description="one vehicle; default the whole fleet")
    start: IsoDatetime | None = Field(None, alias="from", description="ISO-8601; default `to` minus 7 days")
    end: IsoDatetime | None = Field(None, alias="to", description="ISO-8601, exclusive; default now")
    format: Literal["json", "csv"] = "json"
    limit: int = Field(100, ge=1, le=PAGE_ROWS, description="json rows per page (csv: everything in range)")
    cursor: str | None = None


class EventsQuery(RangeQuery):
    type: str | None = Field(None, max_length=300, description="comma-separated event types; default all")


class SummaryQuery(Query):
    vehicle_id: uuid.UUID | None = None
    start: IsoDatetime | None = Field(None, alias="from")
    end: IsoDatetime | None = Field(None, alias="to")
    format: Literal["json", "csv"] = "json"


class Trip(ResponseModel):
    vehicle_id: uuid.UUID
    start_time: dt.datetime
    end_time: dt.datetime | None = Field(description="null: the trip is still going on")
    start_lat: float
    start_lng: float
    end_lat: float
    end_lng: float
    distance_m: float
    duration_s: float
    max_speed_kmh: float
    avg_speed_kmh: float
    path: list[list[float]] = Field(description="simplified [[lng, lat], ...]")


class TripsPage(ResponseModel):
    data: list[Trip]
    next_cursor: str | None


class Stop(ResponseModel):
    vehicle_id: uuid.UUID
    start_time: dt.datetime
    end_time: dt.datetime | None = Field(description="null: still stopped")
    lat: float
    lng: float
    duration_s: float


class StopsPage(ResponseModel):
    data: list[Stop]
    next_cursor: str | None


class FleetEvent(ResponseModel):
    id: int
    vehicle_id: uuid.UUID | None = Field(description="null for customer events (quota.reached)")
    type: str
    time: dt.datetime
    lat: float | None
    lng: float | None
    data: dict[str, Any]


class FleetEventsPage(ResponseModel):
    data: list[FleetEvent]
    next_cursor: str | None


class Totals(ResponseModel):
    distance_m: float
    moving_s: float
    stopped_s: float
    max_speed_kmh: float | None
    avg_speed_kmh: float | None = Field(description="distance / moving time")
    trips: int
    stops: int
    overspeed_count: int


class VehicleTotals(Totals):
    vehicle_id: uuid.UUID
    name: str


class Summary(ResponseModel):
    start: dt.datetime = Field(alias="from")
    end: dt.datetime = Field(alias="to")
    vehicles: list[VehicleTotals]
    fleet: Totals


class EventSettings(ResponseModel):
    stop_radius_m: float
    stop_speed_kmh: float
    min_stop_s: float
    speed_limit_kmh: float | None
    overspeed_min_s: float
    offline_after_s: float


class EventSettingsBody(RequestModel):
    stop_radius_m: float = Field(Thresholds.stop_radius_m, ge=5, le=5_000)
    stop_speed_kmh: float = Field(Thresholds.stop_speed_kmh, ge=0, le=100)
    min_stop_s: float = Field(Thresholds.min_stop_s, ge=10, le=86_400)
    speed_limit_kmh: float | None = Field(None, gt=0, le=500, description="null: vehicle and zone limits only")
    overspeed_min_s: float = Field(Thresholds.overspeed_min_s, ge=0, le=3_600)
    offline_after_s: float = Field(Thresholds.offline_after_s, ge=60, le=7 * 86_400)


def _range(start: dt.datetime | None, end: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    end = _utc(end) or dt.datetime.now(UTC)
    start = _utc(start) or end - dt.timedelta(days=DEFAULT_DAYS)
    if start >= end:
        raise field_error("query", "from", "must be before `to`")
    if end - start > dt.timedelta(days=MAX_DAYS):
        raise field_error("query", "to", f"at most {MAX_DAYS} days after `from`")
    return start, end


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _kmh(mps: float | None) -> float | None:
    return round(mps * 3.6, 2) if mps is not None else None


def _trip(r: Any) -> dict:
    return {
        "vehicle_id": str(r["vehicle_id"]),
        "start_time": _iso(r["start_time"]),
        "end_time": _iso(r["end_time"]),
        "start_lat": r["start_lat"],
        "start_lng": r["start_lng"],
        "end_lat": r["end_lat"],
        "end_lng": r["end_lng"],
        "distance_m": round(r["distance_m"], 1),
        "duration_s": r["duration_s"],
        "max_speed_kmh": _kmh(r["max_speed"]),
        "avg_speed_kmh": _kmh(r["avg_speed"]),
        "path": r["path"],
    }


def _stop(r: Any) -> dict:
    return {
        "vehicle_id": str(r["vehicle_id"]),
        "start_time": _iso(r["start_time"]),
        "end_time": _iso(r["end_time"]),
        "lat": r["lat"],
        "lng": r["lng"],
        "duration_s": r["duration_s"],
    }


def _event(r: Any) -> dict:
    return {
        "id": r["id"],
        "vehicle_id": str(r["vehicle_id"]) if r["vehicle_id"] else None,
        "type": r["type"],
        "time": _iso(r["time"]),
        "lat": r["lat"],
        "lng": r["lng"],
        "data": r["data"],
    }


def _csv_cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else value


def _csv_lines(rows: list[dict], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header and rows:
        writer.writerow(rows[0].keys())
    for row in rows:
        writer.writerow([_csv_cell(v) for v in row.values()])
    return buffer.getvalue()


Fetch = Callable[[Any, Any, int], Awaitable[list]]  # (conn, cursor, limit) -> rows


async def _listing(query: RangeQuery, fetch: Fetch, render: Callable[[Any], dict], key: Callable[[Any], tuple], decode):
    """One JSON page, or every row of the range as CSV (pages of rows, each its own transaction)."""
    after = decode(query.cursor) if query.cursor else None
    cid, db = await _customer_db()
    if query.vehicle_id is not None:
        await _vehicle(db, cid, query.vehicle_id)
    if query.format == "json":
        async with db.tenant(cid) as conn:
            rows = await fetch(conn, after, query.limit + 1)
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return {
            "data": [render(r) for r in rows],
            "next_cursor": pagination.encode_parts(*key(rows[-1])) if more else None,
        }

    async def body() -> AsyncIterator[bytes]:
        cursor, first = after, True
        while True:
            async with db.tenant(cid) as conn:
                rows = await fetch(conn, cursor, PAGE_ROWS)
            if rows or first:
                yield _csv_lines([render(r) for r in rows], first).encode()
            first = False
            if len(rows) < PAGE_ROWS:
                return
            cursor = key(rows[-1])

    return Response(body(), mimetype=CSV)


def _vehicle_key(parts: list) -> list:
    return [parts[0], uuid.UUID(parts[1])]


def _id_key(parts: list) -> list:
    if not isinstance(parts[1], int) or isinstance(parts[1], bool):
        raise ValueError("event id")
    return parts


@blueprint.get("/api/v1/reports/trips")
@customer_required("tracking:read")
@operation(
    "Trips starting in a time range, per vehicle or for the fleet (json paged, csv streamed)",
    tags=TAGS,
    query=RangeQuery,
    response=TripsPage,
    errors=(404, 422),
    content={CSV: {"schema": {"type": "string"}}},
)
async def trips_report(query: RangeQuery):
    start, end = _range(query.start, query.end)
    cid = (await _customer_db())[0]

    async def fetch(conn, after, limit):
        return await store.trips_page(conn, cid, query.vehicle_id, start, end, after, limit)

    return await _listing(
        query,
        fetch,
        _trip,
        lambda r: (r["start_time"], str(r["vehicle_id"])),
        lambda c: tuple(pagination.decode_parts(c, 2, _vehicle_key)),
    )


@blueprint.get("/api/v1/reports/stops")
@customer_required("tracking:read")
@operation(
    "Stops starting in a time range, per vehicle or for the fleet (json paged, csv streamed)",
    tags=TAGS,
    query=RangeQuery,
    response=StopsPage,
    errors=(404, 422),
    content={CSV: {"schema": {"type": "string"}}},
)
async def stops_report(query: RangeQuery):
    start, end = _range(query.start, query.end)
    cid = (await _customer_db())[0]

    async def fetch(conn, after, limit):
        return await store.stops_page(conn, cid, query.vehicle_id, start, end, after, limit)

    return await _listing(
        query,
        fetch,
        _stop,
        lambda r: (r["start_time"], str(r["vehicle_id"])),
        lambda c: tuple(pagination.decode_parts(c, 2, _vehicle_key)),
    )


@blueprint.get("/api/v1/reports/events")
@customer_required("tracking:read")
@operation(
    "Fleet events (trips, stops, overspeed, offline/online, quota) in a time range (json paged, csv streamed)",
    tags=TAGS,
    query=EventsQuery,
    response=FleetEventsPage,
    errors=(404, 422),
    content={CSV: {"schema": {"type": "string"}}},
)
async def events_report(query: EventsQuery):
    start, end = _range(query.start, query.end)
    types = [t.strip() for t in query.type.split(",") if t.strip()] if query.type else None
    if types and any(t not in EVENT_TYPES for t in types):
        raise field_error("query", "type", "one of " + ", ".join(EVENT_TYPES))
    cid = (await _customer_db())[0]

    async def fetch(conn, after, limit):
        return await store.events_page(
            conn, cid, vehicle_id=query.vehicle_id, types=types, start=start, end=end, after=after, limit=limit
        )

    return await _listing(
        query, fetch, _event, lambda r: (r["time"], r["id"]), lambda c: tuple(pagination.decode_parts(c, 2, _id_key))
    )


def _totals(rows: list) -> dict:
    distance = sum(r["distance_m"] for r in rows)
    moving = sum(r["moving_s"] for r in rows)
    speeds = [r["max_speed"] for r in rows if r["max_speed"] is not None]
    return {
        "distance_m": round(distance, 1),
        "moving_s": round(moving, 3),
        "stopped_s": round(sum(r["stopped_s"] for r in rows), 3),
        "max_speed_kmh": _kmh(max(speeds)) if speeds else None,
        "avg_speed_kmh": _kmh(distance / moving) if moving > 0 else None,
        "trips": sum(r["trips"] for r in rows),
        "stops": sum(r["stops"] for r in rows),
        "overspeed_count": sum(r["overspeed"] for r in rows),
    }


@blueprint.get("/api/v1/reports/summary")
@customer_required("tracking:read")
@operation(
    "Distance, moving and stopped time, max/avg speed and overspeed count per vehicle and for the fleet",
    tags=TAGS,
    query=SummaryQuery,
    response=Summary,
    errors=(404, 422),
    content={CSV: {"schema": {"type": "string"}}},
    description="Trips and stops overlapping the range count with their share inside it (from their rows).",
)
async def summary_report(query: SummaryQuery):
    start, end = _range(query.start, query.end)
    cid, db = await _customer_db()
    if query.vehicle_id is not None:
        await _vehicle(db, cid, query.vehicle_id)
    async with db.tenant(cid) as conn:
        rows = await store.summary(conn, cid, query.vehicle_id, start, end, overspeed.OVERSPEED)
    vehicles = [{"vehicle_id": str(r["vehicle_id"]), "name": r["name"], **_totals([r])} for r in rows]
    if query.format == "csv":
        return Response(_csv_lines(vehicles, True), mimetype=CSV)
    return {"from": _iso(start), "to": _iso(end), "vehicles": vehicles, "fleet": _totals(rows)}


@blueprint.get("/api/v1/tracking/event-settings")
@customer_required("tracking:read")
@operation("The thresholds of the fleet events (defaults where not set)", tags=TAGS, response=EventSettings)
async def get_event_settings():
    cid, db = await _customer_db()
    async with db.tenant(cid) as conn:
        settings, _, _ = await store.settings_of(conn, cid)
    return Thresholds.of(settings).as_dict()


@blueprint.put("/api/v1/tracking/event-settings")
@customer_required("fleet:write")
@operation(
    "Set the thresholds of the fleet events (omitted fields take their defaults)",
    tags=TAGS,
    body=EventSettingsBody,
    response=EventSettings,
    errors=(422,),
    description="Applies to fixes analysed from then on; stored trips, stops and events stay as they are.",
)
async def put_event_settings(body: EventSettingsBody):
    cid, db = await _customer_db()
    values = body.model_dump()
    async with db.tenant(cid) as conn:
        await store.put_settings(conn, cid, values)
    return Thresholds.of(values).as_dict()
