"""Customers, for operators: create (201 with the first API key, shown once), list, show, update,
suspend/reactivate, delete (admin role only); and what the operator console needs of one customer:
usage against its plan, plan change, its API keys (list; revoke: admin role only). Cross-tenant
reads go through the audited path."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

import asyncpg
from pydantic import Field
from quart import Blueprint

from api.current import runtime
from storage import api_keys as key_store
from storage import customers as customer_store
from sync_server.domain.accounts import api_keys
from sync_server.domain.accounts import customers as customer_service
from sync_server.domain.billing import stripe_sync

from . import pagination
from .api_keys import ApiKey, ApiKeyCreated, ApiKeyQuery, key_out
from .auth import operator_required
from .billing import PlanChange, Subscription, Usage, change_plan_of, usage_of
from .calls import principal
from .errors import conflict, found, not_found
from .openapi import field_error, operation
from .schemas import Email, Metadata, Page, PageQuery, RequestModel, ResponseModel, omittable

blueprint = Blueprint("customers", __name__)
TAGS = ["customers (operator)"]

Slug = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$", description="lowercase, used in sync URLs; immutable")
PlanId = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")


class CustomerCreate(RequestModel):
    slug: str = Slug
    name: str = Field(min_length=1, max_length=200)
    email: Email | None = None
    plan_id: str = Field("hobby", pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    metadata: Metadata = Field(default_factory=dict)


class CustomerUpdate(RequestModel):
    name: str = omittable(min_length=1, max_length=200)
    email: Email | None = None
    metadata: Metadata = omittable()


class CustomerQuery(PageQuery):
    status: Literal["active", "suspended"] | None = None
    q: str | None = Field(None, min_length=1, max_length=100, description="substring of slug, name or email")
    plan_id: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")


class Customer(ResponseModel):
    id: uuid.UUID
    slug: str
    name: str
    email: str | None
    status: Literal["active", "suspended"]
    suspended_by: Literal["operator", "billing"] | None = None
    deployment_mode: str
    plan_id: str | None
    metadata: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


class CustomerCreated(ResponseModel):
    customer: Customer
    api_key: ApiKeyCreated


def _taken(exc: asyncpg.UniqueViolationError):
    field_name = "email" if "email" in (exc.constraint_name or "") else "slug"
    return conflict(f"{field_name}_taken", f"a customer with this {field_name} already exists", field=field_name)


@blueprint.post("/api/v1/customers")
@operator_required()
@operation(
    "Create a customer with its subscription and first API key (shown once)",
    tags=TAGS,
    body=CustomerCreate,
    response=CustomerCreated,
    status=201,
    errors=(409,),
)
async def create_customer(body: CustomerCreate):
    try:
        created = await customer_service.create(
            runtime(),
            slug=body.slug,
            name=body.name,
            email=body.email,
            metadata=body.metadata,
            plan_id=body.plan_id,
            operator_id=principal().user_id,
        )
    except customer_service.UnknownPlan:
        raise field_error("body", "plan_id", "no such plan") from None
    except asyncpg.UniqueViolationError as exc:
        raise _taken(exc) from None
    return {"customer": dict(created.customer), "api_key": key_out(created.api_key, created.raw_key)}


@blueprint.get("/api/v1/customers")
@operator_required()
@operation(
    "List customers (filters: status, q, plan_id; cursor pagination)",
    tags=TAGS,
    query=CustomerQuery,
    response=Page[Customer],
)
async def list_customers(query: CustomerQuery):
    after = pagination.decode(query.cursor)
    async with runtime().db.operator("list_customers", operator_id=principal().user_id) as conn:
        rows = await customer_store.list_page(
            conn, status=query.status, search=query.q, plan_id=query.plan_id, after=after, limit=query.limit
        )
    return pagination.page(rows, query.limit)


async def _get(conn, customer_id, *, for_update: bool = False):
    row = await customer_store.get(conn, customer_id, for_update=for_update)
    if row is None:
        raise not_found("customer")
    return row


@blueprint.get("/api/v1/customers/<uuid:customer_id>")
@operator_required()
@operation("Show a customer", tags=TAGS, response=Customer)
async def show_customer(customer_id: uuid.UUID):
    async with runtime().db.operator(
        "show_customer", customer_id=str(customer_id), operator_id=principal().user_id
    ) as conn:
        return dict(await _get(conn, customer_id))


@blueprint.patch("/api/v1/customers/<uuid:customer_id>")
@operator_required()
@operation(
    "Update a customer's name, email or metadata (the slug never changes)",
    tags=TAGS,
    body=CustomerUpdate,
    response=Customer,
    errors=(409,),
)
async def update_customer(customer_id: uuid.UUID, body: CustomerUpdate):
    changes = body.model_dump(exclude_unset=True)
    for required in ("name", "metadata"):
        if required in changes and changes[required] is None:
            raise field_error("body", required, "must not be null")
    rt = runtime()
    try:
        async with rt.db.operator(
            "update_customer", customer_id=str(customer_id), operator_id=principal().user_id
        ) as conn:
            current = dict(await _get(conn, customer_id, for_update=True))
            merged = {**current, **changes}
            await customer_store.update(
                conn, customer_id, name=merged["name"], email=merged["email"], metadata=merged["metadata"]
            )
            renamed = (merged["name"], merged["email"]) != (current["name"], current["email"])
            if renamed:  # with Stripe: its customer's name and email follow
                await stripe_sync.changed(rt, conn, customer_id)
            row = dict(await _get(conn, customer_id))
    except asyncpg.UniqueViolationError as exc:
        raise _taken(exc) from None
    if renamed:
        stripe_sync.wake(rt, customer_id)
    return row


async def _set_status(customer_id: uuid.UUID, status: str):
    row = await customer_service.set_status(runtime(), customer_id, status, operator_id=principal().user_id)
    return found(row, "customer")


@blueprint.post("/api/v1/customers/<uuid:customer_id>/suspend")
@operator_required()
@operation("Suspend: API keys and sync connections are refused, open websockets closed", tags=TAGS, response=Customer)
async def suspend_customer(customer_id: uuid.UUID):
    return await _set_status(customer_id, "suspended")


@blueprint.post("/api/v1/customers/<uuid:customer_id>/reactivate")
@operator_required()
@operation("Reactivate a suspended customer", tags=TAGS, response=Customer)
async def reactivate_customer(customer_id: uuid.UUID):
    return await _set_status(customer_id, "active")


@blueprint.delete("/api/v1/customers/<uuid:customer_id>")
@operator_required(role="admin")
@operation("Delete a customer and everything it owns (admin operators only)", tags=TAGS)
async def delete_customer(customer_id: uuid.UUID):
    if not await customer_service.delete(runtime(), customer_id, operator_id=principal().user_id):
        raise not_found("customer")


# --- what the operator console shows of one customer ----------------------------------------------


async def _exists(customer_id: uuid.UUID, reason: str) -> None:
    async with runtime().db.operator(reason, customer_id=str(customer_id), operator_id=principal().user_id) as conn:
        await _get(conn, customer_id)


@blueprint.get("/api/v1/customers/<uuid:customer_id>/usage")
@operator_required()
@operation(
    "A customer's usage against each limit of its plan (as the customer's GET /api/v1/usage)",
    tags=TAGS,
    response=Usage,
    errors=(404,),
)
async def customer_usage(customer_id: uuid.UUID):
    await _exists(customer_id, "customer_usage")
    return await usage_of(customer_id)


@blueprint.post("/api/v1/customers/<uuid:customer_id>/plan")
@operator_required()
@operation(
    "Change a customer's plan (the same rules as the customer's own change: a downgrade is refused "
    "while usage exceeds the new limits)",
    tags=TAGS,
    body=PlanChange,
    response=Subscription,
    errors=(404, 409),
)
async def change_customer_plan(customer_id: uuid.UUID, body: PlanChange):
    return await change_plan_of(customer_id, body.plan_id)


@blueprint.get("/api/v1/customers/<uuid:customer_id>/api-keys")
@operator_required()
@operation(
    "A customer's API keys (display prefix only)", tags=TAGS, query=ApiKeyQuery, response=Page[ApiKey], errors=(404,)
)
async def list_customer_api_keys(customer_id: uuid.UUID, query: ApiKeyQuery):
    await _exists(customer_id, "list_customer_api_keys")
    async with runtime().db.tenant(customer_id) as conn:
        rows = await key_store.list_page(
            conn, include_revoked=query.include_revoked, after=pagination.decode(query.cursor), limit=query.limit
        )
    return pagination.page(rows, query.limit)


@blueprint.delete("/api/v1/customers/<uuid:customer_id>/api-keys/<uuid:key_id>")
@operator_required(role="admin")
@operation("Revoke one of a customer's API keys (admin operators only)", tags=TAGS, errors=(404,))
async def revoke_customer_api_key(customer_id: uuid.UUID, key_id: uuid.UUID):
    if await api_keys.revoke(runtime(), customer_id, key_id) is None:
        raise not_found("API key")
