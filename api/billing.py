"""Plans (public list; operator CRUD), the customer's subscription (one active; upgrade at once,
downgrade refused while usage exceeds the new limits, cancel at period end) and usage."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
from pydantic import Field
from quart import Blueprint

from api.current import runtime
from storage import plans as plan_store
from sync_server.domain.billing import stripe_sync
from sync_server.domain.billing import subscriptions as subscription_service

from .auth import customer_required, operator_required
from .calls import principal
from .errors import ApiError, conflict, found, not_found
from .openapi import operation
from .schemas import Metadata, RequestModel, ResponseModel, omittable

blueprint = Blueprint("billing", __name__)
PLAN_TAGS = ["plans"]
PlanIdPattern = r"^[a-z0-9][a-z0-9_-]{0,31}$"
StripePricePattern = r"^[A-Za-z0-9_]{1,200}$"


def count_field(default: Any = ...) -> Any:
    return Field(default, ge=0, le=2_000_000_000)


class PlanFields(RequestModel):
    name: str = Field(min_length=1, max_length=100)
    price_cents: int = count_field()
    currency: str = Field("usd", pattern=r"^[a-z]{3}$")
    vehicle_limit: int = count_field()
    driver_limit: int = count_field()
    geofence_limit: int = count_field()
    gps_points_per_day: int = Field(ge=0, le=10**15)
    retention_days: int = Field(ge=1, le=3650)
    connection_limit: int = Field(100, ge=1, le=2_000_000_000)
    features: Metadata = Field(default_factory=dict)
    is_public: bool = True
    stripe_price_id: str | None = Field(
        None,
        pattern=StripePricePattern,
        description="Stripe Price billed for the plan (none: free, no Stripe subscription)",
    )


class PlanCreate(PlanFields):
    id: str = Field(pattern=PlanIdPattern)


class PlanUpdate(RequestModel):
    name: str = omittable(min_length=1, max_length=100)
    price_cents: int = count_field(None)
    currency: str = omittable(pattern=r"^[a-z]{3}$")
    vehicle_limit: int = count_field(None)
    driver_limit: int = count_field(None)
    geofence_limit: int = count_field(None)
    gps_points_per_day: int = omittable(ge=0, le=10**15)
    retention_days: int = omittable(ge=1, le=3650)
    connection_limit: int = omittable(ge=1, le=2_000_000_000)
    features: Metadata = omittable()
    is_public: bool = omittable()
    stripe_price_id: str | None = Field(None, pattern=StripePricePattern, description="null: a free plan")


class Plan(ResponseModel):
    id: str
    name: str
    price_cents: int
    currency: str
    vehicle_limit: int
    driver_limit: int
    geofence_limit: int
    gps_points_per_day: int
    retention_days: int
    connection_limit: int
    features: dict[str, Any]
    is_public: bool
    stripe_price_id: str | None = None
    created_at: dt.datetime
    updated_at: dt.datetime


class PlanList(ResponseModel):
    data: list[Plan]


@blueprint.get("/api/v1/plans")
@operation("Public plans, cheapest first (no authentication)", tags=PLAN_TAGS, response=PlanList)
async def list_plans():
    async with runtime().db.platform() as conn:
        rows = await plan_store.list_all(conn, public_only=True)
    return {"data": [dict(r) for r in rows]}


@blueprint.get("/api/v1/plans/<plan_id>")
@operation("Show a plan (no authentication)", tags=PLAN_TAGS, response=Plan)
async def show_plan(plan_id: str):
    async with runtime().db.platform() as conn:
        row = await plan_store.get(conn, plan_id)
    return found(row, "plan")


@blueprint.post("/api/v1/plans")
@operator_required()
@operation("Create a plan", tags=PLAN_TAGS, body=PlanCreate, response=Plan, status=201, errors=(409,))
async def create_plan(body: PlanCreate):
    values = body.model_dump()
    try:
        async with runtime().db.platform() as conn:
            return dict(await plan_store.insert(conn, values.pop("id"), values))
    except asyncpg.UniqueViolationError:
        raise conflict("plan_exists", "a plan with this id already exists", field="id") from None


@blueprint.patch("/api/v1/plans/<plan_id>")
@operator_required()
@operation("Update a plan (applies to its subscribers at once)", tags=PLAN_TAGS, body=PlanUpdate, response=Plan)
async def update_plan(plan_id: str, body: PlanUpdate):
    changes = body.model_dump(exclude_unset=True)
    rt = runtime()
    # operator scope: a new stripe_price_id queues a push of every subscriber in the same transaction
    async with rt.db.operator("update_plan", plan_id=plan_id, operator_id=principal().user_id) as conn:
        current = await plan_store.get(conn, plan_id, for_update=True)
        if current is None:
            raise not_found("plan")
        merged = {**dict(current), **changes}
        row = await plan_store.update(conn, plan_id, merged)
        repriced = merged["stripe_price_id"] != current["stripe_price_id"]
        if repriced:
            await stripe_sync.plan_repriced(rt, conn, plan_id)
    if repriced:
        stripe_sync.wake_all(rt)
    return found(row, "plan")


@blueprint.delete("/api/v1/plans/<plan_id>")
@operator_required(role="admin")
@operation("Delete a plan no subscription has ever used (admin operators only)", tags=PLAN_TAGS, errors=(409,))
async def delete_plan(plan_id: str):
    try:
        async with runtime().db.platform() as conn:
            deleted = await plan_store.delete(conn, plan_id)
    except asyncpg.ForeignKeyViolationError:
        raise conflict(
            "plan_in_use", "subscriptions refer to this plan; make it private instead", plan_id=plan_id
        ) from None
    if not deleted:
        raise not_found("plan")


# --- the customer's subscription and usage ------------------------------------------------------

SUB_TAGS = ["billing"]


class Subscription(ResponseModel):
    id: uuid.UUID
    plan_id: str
    status: str
    current_period_start: dt.datetime
    current_period_end: dt.datetime
    cancel_at_period_end: bool
    created_at: dt.datetime
    canceled_at: dt.datetime | None


class PlanChange(RequestModel):
    plan_id: str = Field(pattern=PlanIdPattern)


class Quota(ResponseModel):
    used: int
    limit: int


class Usage(ResponseModel):
    plan_id: str
    vehicles: Quota
    drivers: Quota
    geofences: Quota
    gps_points_today: Quota = Field(description="points recorded since 00:00 UTC against gps_points_per_day")
    connections: Quota = Field(
        description="sync connections open now (every node's, with Redis) against connection_limit"
    )
    storage_bytes: int = Field(description="bytes of document history and snapshots")
    sync_frames_too_big_today: int = Field(
        description="websocket frames refused since 00:00 UTC for passing SYNC_MAX_MESSAGE_BYTES (a client that cannot sync)"
    )


@blueprint.get("/api/v1/subscription")
@customer_required("billing:read")
@operation("The active subscription", tags=SUB_TAGS, response=Subscription, errors=(404,))
async def show_subscription():
    row = await subscription_service.active(runtime(), principal().customer_id)
    return found(row, "active subscription")


@blueprint.post("/api/v1/subscription/change")
@customer_required("billing:write")
@operation(
    "Change plan: upgrades apply at once; a downgrade is refused while usage exceeds its limits",
    tags=SUB_TAGS,
    body=PlanChange,
    response=Subscription,
    errors=(404, 409),
)
async def change_plan(body: PlanChange):
    return await change_plan_of(principal().customer_id, body.plan_id)


async def change_plan_of(customer_id, plan_id: str) -> dict:
    """The plan change of a customer (its own admin key, or an operator: api.customers), errors mapped."""
    try:
        row = await subscription_service.change_plan(runtime(), customer_id, plan_id)
    except subscription_service.UnknownPlan:
        raise not_found("plan") from None
    except subscription_service.NoActiveSubscription:
        raise not_found("active subscription") from None
    except subscription_service.DowngradeRefused as exc:
        raise ApiError(
            409,
            "downgrade_exceeds_limits",
            f"usage exceeds the limits of plan {plan_id!r}; reduce it first",
            {"plan_id": plan_id, "violations": exc.violations},
        ) from None
    return dict(row)


@blueprint.post("/api/v1/subscription/cancel")
@customer_required("billing:write")
@operation("Cancel at the end of the current period", tags=SUB_TAGS, response=Subscription, errors=(404,))
async def cancel_subscription():
    row = await subscription_service.cancel_at_period_end(runtime(), principal().customer_id)
    return found(row, "active subscription")


@blueprint.get("/api/v1/usage")
@customer_required("billing:read")
@operation(
    "Usage against the plan: vehicles, drivers, geofences, GPS points today, connections, storage",
    tags=SUB_TAGS,
    response=Usage,
)
async def usage():
    return await usage_of(principal().customer_id)


async def usage_of(customer_id) -> dict:
    """A customer's usage against its plan (its own GET /api/v1/usage, or an operator's: api.customers)."""
    rt = runtime()
    limiter = getattr(rt, "connection_limit", None)  # extensions.shared_limits (CONNECTION_LIMITS=enforce)
    if limiter is not None:
        open_now = await limiter.in_use(str(customer_id))
    else:  # limits off: this node's own connections
        open_now = sum(len(room.connections) for room in rt.rooms.rooms(str(customer_id)))
    return await rt.plan_limits.report(customer_id, connections=open_now)
