"""Tracking REST (API key with tracking:read): positions of a vehicle over a time range (cursor paged,
json | geojson | csv | gpx, exports streamed), latest positions of every vehicle, geofence events,
a daily summary per vehicle, and the GPS quota use of a day."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field
from quart import Blueprint, Response

from api.current import runtime
from storage import geofence_events as event_store
from storage import positions as position_store
from storage import usage as usage_store
from storage import vehicles as vehicle_store
from sync_server.domain.tracking import quota
from sync_server.domain.tracking.distance import path_length

from . import pagination, track_formats
from .auth import customer_required
from .calls import principal
from .errors import ApiError, not_found
from .openapi import field_error, operation
from .schemas import RequestModel, ResponseModel

blueprint = Blueprint("tracking", __name__)
UTC = dt.UTC
PAGE_ROWS = 5_000  # rows per database round trip while streaming
JSON_DEFAULT_LIMIT = 1_000
JSON_MAX_LIMIT = 10_000
MAX_SUMMARY_DAYS = 31


TAGS = ["tracking"]
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?)?$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _iso(pattern: re.Pattern, what: str):
    def check(value: Any) -> Any:
        # pydantic would also read "0.5" as a Unix time: the published schema says ISO-8601 text only
        if not isinstance(value, str) or not pattern.match(value):
            raise ValueError(f"must be {what}")
        return value

    return BeforeValidator(check)


IsoDatetime = Annotated[dt.datetime, _iso(_ISO_DATETIME, "an ISO-8601 date-time, e.g. 2026-01-31T08:00:00Z")]
IsoDate = Annotated[dt.date, _iso(_ISO_DATE, "a date YYYY-MM-DD")]


class Query(RequestModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class PositionsQuery(Query):
    start: IsoDatetime | None = Field(None, alias="from", description="ISO-8601; default `to` minus 24 h")
    end: IsoDatetime | None = Field(None, alias="to", description="ISO-8601, exclusive; default now")
    limit: int | None = Field(
        None, ge=1, le=1_000_000, description="json: default 1000, at most 10000; exports: default everything in range"
    )
    cursor: str | None = None
    format: Literal["json", "geojson", "csv", "gpx"] = "json"


class EventsQuery(Query):
    vehicle_id: uuid.UUID | None = None
    geofence_id: uuid.UUID | None = None
    start: IsoDatetime | None = Field(None, alias="from")
    end: IsoDatetime | None = Field(None, alias="to")
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = None


class SummaryQuery(Query):
    start: IsoDate | None = Field(None, alias="from", description="first UTC day; default today")
    end: IsoDate | None = Field(None, alias="to", description="last UTC day (inclusive); default `from`")


class UsageQuery(Query):
    day: IsoDate | None = None


class Position(ResponseModel):
    time: dt.datetime
    lat: float
    lng: float
    speed: float | None = Field(None, description="m/s")
    heading: float | None = None
    accuracy: float | None = Field(None, description="metres")
    altitude: float | None = Field(None, description="metres")


class PositionsPage(ResponseModel):
    vehicle_id: uuid.UUID
    data: list[Position]
    next_cursor: str | None


class LatestPosition(Position):
    vehicle_id: uuid.UUID
    name: str
    vehicle_identifier: str


class LatestPositions(ResponseModel):
    data: list[LatestPosition]


class GeofenceEvent(ResponseModel):
    id: int
    vehicle_id: uuid.UUID
    geofence_id: uuid.UUID
    geofence_name: str
    event: Literal["enter", "exit"]
    time: dt.datetime
    lat: float
    lng: float


class GeofenceEventsPage(ResponseModel):
    data: list[GeofenceEvent]
    next_cursor: str | None


class DaySummary(ResponseModel):
    day: dt.date
    points: int
    distance_m: float = Field(description="sum of geodesic distances between consecutive fixes")
    max_speed: float | None = Field(description="m/s")
    first_fix: dt.datetime | None
    last_fix: dt.datetime | None


class DailySummary(ResponseModel):
    vehicle_id: uuid.UUID
    data: list[DaySummary]


class TrackingUsage(ResponseModel):
    day: dt.date
    plan_id: str
    gps_points: int = Field(description="points materialized for fixes of this UTC day")
    limit: int = Field(description="the plan's gps_points_per_day")
    remaining: int
    quota_exceeded: bool = Field(description="points of this day were not materialized: quota reached")
    rejected: dict[str, int] = Field(description="rejected points of this day per reason")


def _invalid(field: str, message: str) -> ApiError:
    return field_error("query", field, message)


def _event_key(parts: list) -> list:
    """An events cursor is (time, event id): the id must be an integer."""
    if not isinstance(parts[1], int) or isinstance(parts[1], bool):
        raise ValueError("event id")
    return parts


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


async def _customer_db():
    cid = principal().customer_id
    return cid, await runtime().registry.for_customer(cid)


async def _vehicle(db, cid: str, vehicle_id: uuid.UUID) -> Any:
    async with db.tenant(cid) as conn:
        row = await vehicle_store.tracker(conn, cid, vehicle_id=vehicle_id)
    if row is None:
        raise not_found("vehicle")
    return row


@blueprint.get("/api/v1/vehicles/<uuid:vehicle_id>/positions")
@customer_required("tracking:read")
@operation(
    "Positions of a vehicle over a time range (json paged; geojson, csv, gpx streamed)",
    tags=TAGS,
    query=PositionsQuery,
    response=PositionsPage,
    errors=(404, 422),
)
async def vehicle_positions(vehicle_id: uuid.UUID, query: PositionsQuery):
    end = _utc(query.end) or dt.datetime.now(UTC)
    start = _utc(query.start) or end - dt.timedelta(days=1)
    if start >= end:
        raise _invalid("from", "must be before `to`")
    after = pagination.decode_parts(query.cursor, 1)[0] if query.cursor else None
    cid, db = await _customer_db()
    vehicle = await _vehicle(db, cid, vehicle_id)
    if query.format == "json":
        limit = query.limit or JSON_DEFAULT_LIMIT
        if limit > JSON_MAX_LIMIT:
            raise _invalid("limit", f"at most {JSON_MAX_LIMIT} for format=json (exports stream any amount)")
        async with db.tenant(cid) as conn:
            rows = await position_store.page(conn, cid, vehicle_id, start, end, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "vehicle_id": str(vehicle_id),
            "data": [track_formats.position_json(r) for r in rows],
            "next_cursor": pagination.encode_parts(rows[-1]["time"]) if more else None,
        }

    headers = {"Content-Disposition": f'attachment; filename="{vehicle_id}.{track_formats.EXTENSIONS[query.format]}"'}
    if query.limit is not None:
        async with db.tenant(cid) as conn:
            next_time = await position_store.time_after_page(conn, cid, vehicle_id, start, end, after, query.limit)
        if next_time is not None:
            headers["X-Next-Cursor"] = pagination.encode_parts(next_time)
    pages = _pages(db, cid, vehicle_id, start, end, after, query.limit)
    if query.format == "geojson":
        body = track_formats.geojson(pages, {"vehicle_id": str(vehicle_id), "name": vehicle["name"]})
    elif query.format == "csv":
        body = track_formats.csv(pages)
    else:
        body = track_formats.gpx(pages, vehicle["name"])
    return Response(_encoded(body), mimetype=track_formats.MIMETYPES[query.format], headers=headers)


async def _encoded(chunks: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield chunk.encode()


async def _pages(
    db,
    cid: str,
    vehicle_id: uuid.UUID,
    start: dt.datetime,
    end: dt.datetime,
    after: dt.datetime | None,
    limit: int | None,
) -> AsyncIterator[list]:
    """Keyset pages, each read in its own short transaction (a long export holds no snapshot)."""
    remaining = limit
    while remaining is None or remaining > 0:
        n = PAGE_ROWS if remaining is None else min(PAGE_ROWS, remaining)
        async with db.tenant(cid) as conn:
            rows = await position_store.page(conn, cid, vehicle_id, start, end, after, n)
        if rows:
            yield rows
        if len(rows) < n:
            return
        after = rows[-1]["time"]
        if remaining is not None:
            remaining -= len(rows)


@blueprint.get("/api/v1/positions/latest")
@customer_required("tracking:read")
@operation("Latest position of every vehicle", tags=TAGS, response=LatestPositions)
async def latest_positions():
    cid, db = await _customer_db()
    async with db.tenant(cid) as conn:
        rows = await position_store.latest_all(conn)
    return {
        "data": [
            {
                "vehicle_id": str(r["vehicle_id"]),
                "name": r["name"],
                "vehicle_identifier": r["vehicle_identifier"],
                **track_formats.position_json(r),
            }
            for r in rows
        ]
    }


@blueprint.get("/api/v1/geofence-events")
@customer_required("tracking:read")
@operation(
    "Geofence enter/exit events in time order", tags=TAGS, query=EventsQuery, response=GeofenceEventsPage, errors=(422,)
)
async def geofence_events(query: EventsQuery):
    after = None
    if query.cursor:
        after = tuple(pagination.decode_parts(query.cursor, 2, _event_key))
    cid, db = await _customer_db()
    async with db.tenant(cid) as conn:
        rows = await event_store.page(
            conn,
            cid,
            vehicle_id=query.vehicle_id,
            geofence_id=query.geofence_id,
            start=_utc(query.start),
            end=_utc(query.end),
            after=after,
            limit=query.limit + 1,
        )
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    data = [
        {
            "id": r["id"],
            "vehicle_id": str(r["vehicle_id"]),
            "geofence_id": str(r["geofence_id"]),
            "geofence_name": r["geofence_name"],
            "event": r["event"],
            "time": r["time"].isoformat().replace("+00:00", "Z"),
            "lat": r["lat"],
            "lng": r["lng"],
        }
        for r in rows
    ]
    return {"data": data, "next_cursor": pagination.encode_parts(rows[-1]["time"], rows[-1]["id"]) if more else None}


@blueprint.get("/api/v1/vehicles/<uuid:vehicle_id>/daily-summary")
@customer_required("tracking:read")
@operation(
    "Per UTC day: points, geodesic distance, max speed of a vehicle",
    tags=TAGS,
    query=SummaryQuery,
    response=DailySummary,
    errors=(404, 422),
)
async def daily_summary(vehicle_id: uuid.UUID, query: SummaryQuery):
    first = query.start or dt.datetime.now(UTC).date()
    last = query.end or first
    if last < first:
        raise _invalid("to", "must not be before `from`")
    if (last - first).days >= MAX_SUMMARY_DAYS:
        raise _invalid("to", f"at most {MAX_SUMMARY_DAYS} days per request")
    cid, db = await _customer_db()
    await _vehicle(db, cid, vehicle_id)
    days = []
    day = first
    while day <= last:
        days.append(await _summary_of_day(db, cid, vehicle_id, day))
        day += dt.timedelta(days=1)
    return {"vehicle_id": str(vehicle_id), "data": days}


async def _summary_of_day(db, cid: str, vehicle_id: uuid.UUID, day: dt.date) -> dict:
    """Points, geodesic distance (sum over consecutive fixes) and max speed of one UTC day."""
    start = dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
    points, distance, max_speed, previous = 0, 0.0, None, None
    first_fix = last_fix = None
    async for rows in _pages(db, cid, vehicle_id, start, start + dt.timedelta(days=1), None, None):
        points += len(rows)
        first_fix = first_fix or rows[0]["time"]
        last_fix = rows[-1]["time"]
        speeds = [r["speed"] for r in rows if r["speed"] is not None]
        if speeds:
            max_speed = max(max_speed or 0.0, max(speeds))
        # Geodesic sums cost ~40 us a pair: off the event loop.
        meters, previous = await asyncio.to_thread(path_length, [(r["lat"], r["lng"]) for r in rows], previous)
        distance += meters

    def iso(t):
        return t.isoformat().replace("+00:00", "Z") if t else None

    return {
        "day": day.isoformat(),
        "points": points,
        "distance_m": round(distance, 1),
        "max_speed": max_speed,
        "first_fix": iso(first_fix),
        "last_fix": iso(last_fix),
    }


@blueprint.get("/api/v1/tracking/usage")
@customer_required("tracking:read")
@operation(
    "GPS quota use of a day and rejected points per reason",
    tags=TAGS,
    query=UsageQuery,
    response=TrackingUsage,
    errors=(422,),
)
async def tracking_usage(query: UsageQuery):
    """How much of the day's GPS quota is used, and how many points were rejected and why."""
    day = query.day or dt.datetime.now(UTC).date()
    cid, db = await _customer_db()
    limits = await runtime().tracking.limits(cid)
    async with db.tenant(cid) as conn:
        metrics = await usage_store.of_day(conn, cid, day, quota.POINTS_METRIC)
    stored = metrics.get(quota.POINTS_METRIC, 0)
    rejected = {m[len(quota.REJECTED_PREFIX) :]: n for m, n in metrics.items() if m.startswith(quota.REJECTED_PREFIX)}
    return {
        "day": day.isoformat(),
        "plan_id": limits.plan_id,
        "gps_points": stored,
        "limit": limits.gps_points_per_day,
        "remaining": max(0, limits.gps_points_per_day - stored),
        "quota_exceeded": rejected.get(quota.QUOTA_EXCEEDED, 0) > 0,
        "rejected": rejected,
    }
