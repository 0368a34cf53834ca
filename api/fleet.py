"""Fleet: vehicles, drivers and geofences of the calling customer (API key, fleet:read/fleet:write).

Creating past the plan's limit answers 402 `plan_limit_reached` (sync_server/domain/billing/plans.py holds the
rule and the lock). Tenant data lives wherever the registry says the customer lives.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import asyncpg
import structlog
from pydantic import Field, RootModel
from quart import Blueprint

from api.current import runtime
from storage import drivers as driver_store
from storage import geofences as geofence_store
from storage import vehicles as vehicle_store
from sync_server.domain.billing import plans
from sync_server.domain.fleet import device_secrets, geofence_shapes

from . import pagination
from .auth import customer_database, customer_required, customer_transaction
from .calls import principal
from .errors import ApiError, conflict, found, not_found
from .openapi import field_error, operation, validation_failed
from .rendered import Rendered, fields_of
from .schemas import Email, Metadata, Page, PageQuery, RequestModel, ResponseModel, omittable

log = structlog.get_logger("api.fleet")

blueprint = Blueprint("fleet", __name__)
LIMIT_ERRORS = (402, 409)


@asynccontextmanager
async def _plan_limit() -> AsyncIterator[None]:
    try:
        yield
    except plans.PlanLimitReached as exc:
        raise ApiError(402, "plan_limit_reached", str(exc), exc.details()) from None


@asynccontextmanager
async def _limited(resource: str) -> AsyncIterator[asyncpg.Connection]:
    """A tenant transaction in which one more `resource` fits the plan (402 otherwise)."""
    async with _plan_limit(), runtime().plan_limits.within_limit(principal().customer_id, resource) as conn:
        yield conn


# --- vehicles -----------------------------------------------------------------------------------

VEHICLE_TAGS = ["vehicles"]
VehicleType = Annotated[
    str,
    Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_-]*$", description="e.g. car, van, truck, motorcycle"),
]


class VehicleCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    vehicle_identifier: str = Field(min_length=1, max_length=100, description="unique per customer (plate, VIN)")
    vehicle_type: VehicleType = "car"
    metadata: Metadata = Field(default_factory=dict)


class VehicleUpdate(RequestModel):
    name: str = omittable(min_length=1, max_length=200)
    vehicle_identifier: str = omittable(min_length=1, max_length=100)
    vehicle_type: VehicleType = omittable()
    metadata: Metadata = omittable()


class VehicleQuery(PageQuery):
    vehicle_type: VehicleType | None = None


class Vehicle(ResponseModel):
    id: uuid.UUID
    name: str
    vehicle_identifier: str
    vehicle_type: str
    metadata: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


class VehicleWithSecret(Vehicle):
    device_secret: str = Field(description="tracker credential for direct position posts; shown only here")


def _identifier_taken() -> ApiError:
    return conflict(
        "vehicle_identifier_taken", "another vehicle has this vehicle_identifier", field="vehicle_identifier"
    )


@blueprint.post("/api/v1/vehicles")
@customer_required("fleet:write")
@operation(
    "Create a vehicle (its device secret is shown once)",
    tags=VEHICLE_TAGS,
    body=VehicleCreate,
    response=VehicleWithSecret,
    status=201,
    errors=LIMIT_ERRORS,
)
async def create_vehicle(body: VehicleCreate):
    secret = device_secrets.generate()
    customer_id = principal().customer_id
    try:
        async with _plan_limit():
            row = await runtime().plan_limits.insert_within_limit(
                customer_id,
                "vehicles",
                lambda db, limit: vehicle_store.insert(
                    db,
                    customer_id,
                    name=body.name,
                    vehicle_identifier=body.vehicle_identifier,
                    vehicle_type=body.vehicle_type,
                    metadata=body.metadata,
                    device_secret_hash=device_secrets.digest(secret),
                    limit=limit,
                    rendered=fields_of(Vehicle),
                ),
            )
    except asyncpg.UniqueViolationError:
        raise _identifier_taken() from None
    # VehicleWithSecret is Vehicle and device_secret (tests/rest/test_rendered_rows.py holds it to that)
    return Rendered(f'{row["json"][:-1]},"device_secret":{json.dumps(secret)}}}'.encode())


@blueprint.get("/api/v1/vehicles")
@customer_required("fleet:read")
@operation("List vehicles", tags=VEHICLE_TAGS, query=VehicleQuery, response=Page[Vehicle])
async def list_vehicles(query: VehicleQuery):
    db, customer_id = await customer_database()
    rows = await vehicle_store.list_page(
        db,
        customer_id,
        vehicle_type=query.vehicle_type,
        after=pagination.decode(query.cursor),
        limit=query.limit,
        rendered=fields_of(Vehicle),
    )
    return pagination.rendered_page(rows, query.limit)


@blueprint.get("/api/v1/vehicles/<uuid:vehicle_id>")
@customer_required("fleet:read")
@operation("Show a vehicle", tags=VEHICLE_TAGS, response=Vehicle)
async def show_vehicle(vehicle_id: uuid.UUID):
    async with customer_transaction() as conn:
        row = await vehicle_store.get(conn, vehicle_id)
    return found(row, "vehicle")


@blueprint.patch("/api/v1/vehicles/<uuid:vehicle_id>")
@customer_required("fleet:write")
@operation("Update a vehicle", tags=VEHICLE_TAGS, body=VehicleUpdate, response=Vehicle, errors=(409,))
async def update_vehicle(vehicle_id: uuid.UUID, body: VehicleUpdate):
    changes = body.model_dump(exclude_unset=True)
    try:
        async with customer_transaction() as conn:
            current = await vehicle_store.get(conn, vehicle_id, for_update=True)
            if current is None:
                raise not_found("vehicle")
            merged = {**dict(current), **changes}
            return found(
                await vehicle_store.update(
                    conn,
                    vehicle_id,
                    name=merged["name"],
                    vehicle_identifier=merged["vehicle_identifier"],
                    vehicle_type=merged["vehicle_type"],
                    metadata=merged["metadata"],
                ),
                "vehicle",
            )
    except asyncpg.UniqueViolationError:
        raise _identifier_taken() from None


@blueprint.post("/api/v1/vehicles/<uuid:vehicle_id>/device-secret")
@customer_required("fleet:write")
@operation(
    "Rotate a vehicle's device secret (the new one is shown once; the old one stops working)",
    tags=VEHICLE_TAGS,
    response=VehicleWithSecret,
)
async def rotate_device_secret(vehicle_id: uuid.UUID):
    secret = device_secrets.generate()
    async with customer_transaction() as conn:
        row = await vehicle_store.set_device_secret_hash(conn, vehicle_id, device_secrets.digest(secret))
    if row is None:
        raise not_found("vehicle")
    return {**dict(row), "device_secret": secret}


@blueprint.delete("/api/v1/vehicles/<uuid:vehicle_id>")
@customer_required("fleet:write")
@operation("Delete a vehicle (its positions and events go with it; drivers are unassigned)", tags=VEHICLE_TAGS)
async def delete_vehicle(vehicle_id: uuid.UUID):
    async with customer_transaction() as conn:
        deleted = await vehicle_store.delete(conn, vehicle_id)
    if deleted is None:
        raise not_found("vehicle")
    # Its track documents' open sockets close on every node (sync_server.domain.tracking.install).
    await runtime().publish(
        "vehicle_deleted",
        customer_id=principal().customer_id,
        vehicle_id=str(deleted["id"]),
        identifier=deleted["vehicle_identifier"] or "",
    )


# --- drivers ------------------------------------------------------------------------------------

DRIVER_TAGS = ["drivers"]
Phone = Annotated[str, Field(min_length=3, max_length=32, pattern=r"^\+?[0-9 ()\-]{3,32}$")]


class DriverCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    email: Email | None = None
    phone: Phone | None = None
    license_number: str | None = Field(None, min_length=1, max_length=64)
    vehicle_id: uuid.UUID | None = Field(None, description="the vehicle this driver is assigned to")


class DriverUpdate(RequestModel):
    name: str = omittable(min_length=1, max_length=200)
    email: Email | None = None
    phone: Phone | None = None
    license_number: str | None = Field(None, min_length=1, max_length=64)
    vehicle_id: uuid.UUID | None = None


class DriverQuery(PageQuery):
    vehicle_id: uuid.UUID | None = None


class Driver(ResponseModel):
    id: uuid.UUID
    name: str
    email: str | None
    phone: str | None
    license_number: str | None
    vehicle_id: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime


async def _check_vehicle(conn, vehicle_id) -> None:
    # A foreign key alone would accept another tenant's vehicle id (RI checks bypass RLS).
    if vehicle_id is not None and not await vehicle_store.exists(conn, vehicle_id):
        raise field_error("body", "vehicle_id", "no such vehicle", "not_found")


def _driver_email_taken() -> ApiError:
    return conflict("email_taken", "another driver has this email (in any letter case)", field="email")


@blueprint.post("/api/v1/drivers")
@customer_required("fleet:write")
@operation("Create a driver", tags=DRIVER_TAGS, body=DriverCreate, response=Driver, status=201, errors=LIMIT_ERRORS)
async def create_driver(body: DriverCreate):
    try:
        async with _limited("drivers") as conn:
            await _check_vehicle(conn, body.vehicle_id)
            row = await driver_store.insert(
                conn,
                principal().customer_id,
                name=body.name,
                email=body.email,
                phone=body.phone,
                license_number=body.license_number,
                vehicle_id=body.vehicle_id,
            )
    except asyncpg.UniqueViolationError:
        raise _driver_email_taken() from None
    return dict(row)


@blueprint.get("/api/v1/drivers")
@customer_required("fleet:read")
@operation("List drivers (filter: vehicle_id)", tags=DRIVER_TAGS, query=DriverQuery, response=Page[Driver])
async def list_drivers(query: DriverQuery):
    db, customer_id = await customer_database()
    rows = await driver_store.list_page(
        db,
        customer_id,
        vehicle_id=query.vehicle_id,
        after=pagination.decode(query.cursor),
        limit=query.limit,
        rendered=fields_of(Driver),
    )
    return pagination.rendered_page(rows, query.limit)


@blueprint.get("/api/v1/drivers/<uuid:driver_id>")
@customer_required("fleet:read")
@operation("Show a driver", tags=DRIVER_TAGS, response=Driver)
async def show_driver(driver_id: uuid.UUID):
    async with customer_transaction() as conn:
        row = await driver_store.get(conn, driver_id)
    return found(row, "driver")


@blueprint.patch("/api/v1/drivers/<uuid:driver_id>")
@customer_required("fleet:write")
@operation(
    "Update a driver (null clears email, phone, license_number or vehicle_id)",
    tags=DRIVER_TAGS,
    body=DriverUpdate,
    response=Driver,
    errors=(409,),
)
async def update_driver(driver_id: uuid.UUID, body: DriverUpdate):
    changes = body.model_dump(exclude_unset=True)
    try:
        async with customer_transaction() as conn:
            current = await driver_store.get(conn, driver_id, for_update=True)
            if current is None:
                raise not_found("driver")
            if "vehicle_id" in changes:
                await _check_vehicle(conn, changes["vehicle_id"])
            m = {**dict(current), **changes}
            return found(
                await driver_store.update(
                    conn,
                    driver_id,
                    name=m["name"],
                    email=m["email"],
                    phone=m["phone"],
                    license_number=m["license_number"],
                    vehicle_id=m["vehicle_id"],
                ),
                "driver",
            )
    except asyncpg.UniqueViolationError:
        raise _driver_email_taken() from None


@blueprint.delete("/api/v1/drivers/<uuid:driver_id>")
@customer_required("fleet:write")
@operation("Delete a driver", tags=DRIVER_TAGS)
async def delete_driver(driver_id: uuid.UUID):
    async with customer_transaction() as conn:
        deleted = await driver_store.delete(conn, driver_id)
    if not deleted:
        raise not_found("driver")


# --- geofences ----------------------------------------------------------------------------------

GEOFENCE_TAGS = ["geofences"]
Position = Annotated[list[float], Field(min_length=2, max_length=3, description="[lng, lat] or [lng, lat, alt]")]


class LatLng(RequestModel):
    lat: float = Field(ge=-90, le=90)
    lng: float = Field(ge=-180, le=180)


class GeoJSONPolygon(RequestModel):
    """RFC 7946 Polygon: rings of [lng, lat]; each closed, with at least 4 positions."""

    type: Literal["Polygon"]
    coordinates: list[Annotated[list[Position], Field(min_length=4, max_length=geofence_shapes.MAX_RING_POSITIONS)]] = (
        Field(min_length=1, max_length=geofence_shapes.MAX_RINGS, description="outer ring first, then holes")
    )


Radius = Annotated[float, Field(gt=0, le=1_000_000, description="metres")]


class CircleGeofenceCreate(RequestModel):
    kind: Literal["circle"]
    name: str = Field(min_length=1, max_length=200)
    center: LatLng
    radius_meters: Radius
    active: bool = True
    metadata: Metadata = Field(default_factory=dict)


class PolygonGeofenceCreate(RequestModel):
    kind: Literal["polygon"]
    name: str = Field(min_length=1, max_length=200)
    polygon: GeoJSONPolygon
    active: bool = True
    metadata: Metadata = Field(default_factory=dict)


class GeofenceCreate(RootModel[Annotated[CircleGeofenceCreate | PolygonGeofenceCreate, Field(discriminator="kind")]]):
    pass


class GeofenceUpdate(RequestModel):
    name: str = omittable(min_length=1, max_length=200)
    active: bool = omittable()
    metadata: Metadata = omittable()
    center: LatLng = omittable(description="circles only")
    radius_meters: Radius = omittable(description="circles only")
    polygon: GeoJSONPolygon = omittable(description="polygons only")


class GeofenceQuery(PageQuery):
    active: bool | None = None
    kind: Literal["circle", "polygon"] | None = None


class Point(ResponseModel):
    lat: float
    lng: float


class BoundingBox(ResponseModel):
    min_lat: float
    min_lng: float
    max_lat: float
    max_lng: float


class Geofence(ResponseModel):
    id: uuid.UUID
    name: str
    kind: Literal["circle", "polygon"]
    center: Point | None
    radius_meters: float | None
    polygon: dict | None = Field(description="GeoJSON Polygon (kind polygon)")
    bbox: BoundingBox
    active: bool
    metadata: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


def _geofence_out(row) -> dict:
    out = dict(row)
    out["center"] = {"lat": row["center_lat"], "lng": row["center_lng"]} if row["kind"] == "circle" else None
    out["bbox"] = {k: row[k] for k in ("min_lat", "min_lng", "max_lat", "max_lng")}
    return out


def _geometry(kind: str, center: dict | None, radius: float | None, polygon: dict | None, field_prefix: str) -> dict:
    """The geometry columns (with bounding box) of a validated shape; 422 naming the bad position."""
    if kind == "circle":
        if center is None or radius is None:  # never: the create schema and the stored circle give both
            raise ValueError("a circle geofence needs a center and a radius")
        bbox = geofence_shapes.circle_bbox(center["lat"], center["lng"], radius)
        values = {"center_lat": center["lat"], "center_lng": center["lng"], "radius_meters": radius, "polygon": None}
    else:
        if polygon is None:  # never: the create schema and the stored polygon give it
            raise ValueError("a polygon geofence needs a polygon")
        problems = geofence_shapes.polygon_problems(polygon["coordinates"])
        if problems:
            raise validation_failed(
                [
                    {
                        "location": "body",
                        "field": f"{field_prefix}polygon.{path}",
                        "message": message,
                        "type": "geometry_invalid",
                    }
                    for path, message in problems
                ]
            )
        bbox = geofence_shapes.polygon_bbox(polygon["coordinates"])
        values = {"center_lat": None, "center_lng": None, "radius_meters": None, "polygon": polygon}
    return {**values, **dict(zip(("min_lat", "min_lng", "max_lat", "max_lng"), bbox))}


@blueprint.post("/api/v1/geofences")
@customer_required("fleet:write")
@operation(
    "Create a geofence: a circle (center, radius_meters) or a GeoJSON polygon",
    tags=GEOFENCE_TAGS,
    body=GeofenceCreate,
    response=Geofence,
    status=201,
    errors=LIMIT_ERRORS,
)
async def create_geofence(body: GeofenceCreate):
    shape = body.root
    data = shape.model_dump()
    values = {
        "name": shape.name,
        "kind": shape.kind,
        "active": shape.active,
        "metadata": shape.metadata,
        **_geometry(shape.kind, data.get("center"), data.get("radius_meters"), data.get("polygon"), ""),
    }
    async with _limited("geofences") as conn:
        row = await geofence_store.insert(conn, principal().customer_id, values)
    await _geofences_changed()
    return _geofence_out(row)


@blueprint.get("/api/v1/geofences")
@customer_required("fleet:read")
@operation("List geofences (filters: active, kind)", tags=GEOFENCE_TAGS, query=GeofenceQuery, response=Page[Geofence])
async def list_geofences(query: GeofenceQuery):
    db, customer_id = await customer_database()
    rows = await geofence_store.list_page(
        db, customer_id, active=query.active, kind=query.kind, after=pagination.decode(query.cursor), limit=query.limit
    )
    return pagination.page(rows, query.limit, _geofence_out)


@blueprint.get("/api/v1/geofences/<uuid:geofence_id>")
@customer_required("fleet:read")
@operation("Show a geofence", tags=GEOFENCE_TAGS, response=Geofence)
async def show_geofence(geofence_id: uuid.UUID):
    async with customer_transaction() as conn:
        row = await geofence_store.get(conn, geofence_id)
    if row is None:
        raise not_found("geofence")
    return _geofence_out(row)


@blueprint.patch("/api/v1/geofences/<uuid:geofence_id>")
@customer_required("fleet:write")
@operation(
    "Update a geofence (its kind never changes: center/radius_meters for circles, polygon for polygons)",
    tags=GEOFENCE_TAGS,
    body=GeofenceUpdate,
    response=Geofence,
)
async def update_geofence(geofence_id: uuid.UUID, body: GeofenceUpdate):
    changes = body.model_dump(exclude_unset=True)
    for required in ("name", "active", "metadata", "center", "radius_meters", "polygon"):
        if required in changes and changes[required] is None:
            raise field_error("body", required, "must not be null")
    async with customer_transaction() as conn:
        current = await geofence_store.get(conn, geofence_id, for_update=True)
        if current is None:
            raise not_found("geofence")
        kind = current["kind"]
        wrong = ("polygon",) if kind == "circle" else ("center", "radius_meters")
        for name in wrong:
            if name in changes:
                raise field_error("body", name, f"not a field of a {kind} geofence")
        center = changes.get("center") or (
            {"lat": current["center_lat"], "lng": current["center_lng"]} if kind == "circle" else None
        )
        values = {
            **dict(current),
            **{k: changes[k] for k in ("name", "active", "metadata") if k in changes},
            **_geometry(
                kind,
                center,
                changes.get("radius_meters", current["radius_meters"]),
                changes.get("polygon", current["polygon"]),
                "",
            ),
        }
        row = await geofence_store.update(conn, geofence_id, values)
    await _geofences_changed()
    return _geofence_out(row)


@blueprint.delete("/api/v1/geofences/<uuid:geofence_id>")
@customer_required("fleet:write")
@operation("Delete a geofence", tags=GEOFENCE_TAGS)
async def delete_geofence(geofence_id: uuid.UUID):
    async with customer_transaction() as conn:
        deleted = await geofence_store.delete(conn, geofence_id)
    if not deleted:
        raise not_found("geofence")
    await _geofences_changed()


async def _geofences_changed() -> None:
    """After the commit: the customer's open dispatcher apps fetch the geofences again (the fleet
    document's `changes` map, tracking.event_feed)."""
    feed = runtime().event_feed
    if feed is not None:
        try:
            await feed.changed(principal().customer_id, "geofences")
        except Exception:  # the change is committed; the apps also fetch on their next start
            log.exception("geofence_change_signal_failed")
