"""Webhooks of the calling customer (API key, webhooks:read / webhooks:write): endpoints, their
delivery log, test sends and manual redelivery. Deliveries follow the Standard Webhooks
specification (sync_server/domain/webhooks: the outbox, the worker, the URL rules)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from pydantic import Field
from quart import Blueprint

from api.current import runtime
from storage import webhooks as store
from sync_server.domain.webhooks import endpoints, outbox, urls

from . import pagination
from .auth import customer_required, customer_transaction
from .calls import principal
from .errors import ApiError, not_found
from .openapi import field_error, operation
from .schemas import Page, PageQuery, RequestModel, ResponseModel

blueprint = Blueprint("webhooks", __name__)
TAGS = ["webhooks"]
ATTEMPTS_SHOWN = 10  # latest attempts listed per delivery

EventFilter = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=endpoints.FILTER_PATTERN.pattern,
        description='an event type ("geofence.entered"), a prefix pattern ("trip.*") or "*"; '
        'an endpoint taking "X" also gets "X.retracted"',
        examples=["geofence.entered"],
    ),
]
Url = Annotated[
    str,
    Field(
        min_length=1,
        max_length=urls.MAX_URL_LENGTH,
        description="http(s) URL resolving to public addresses only (unless the operator allows private ones)",
        examples=["https://example.com/webhooks/fleet"],
    ),
]
Events = Annotated[list[EventFilter], Field(min_length=1, max_length=64)]
Description = Annotated[str, Field(max_length=500)]


class WebhookCreate(RequestModel):
    url: Url
    events: Events
    description: Description = ""


class WebhookUpdate(RequestModel):
    url: Url | None = None
    events: Events | None = None
    description: Description | None = None
    enabled: bool | None = Field(None, description="true resumes a disabled endpoint (its pending deliveries follow)")


class Webhook(ResponseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None = Field(description="why the endpoint was disabled (by its owner or by failures)")
    disabled_at: dt.datetime | None
    failing_since: dt.datetime | None = Field(description="first failure of the current run of failed attempts")
    failures: int = Field(description="failed attempts in a row")
    created_at: dt.datetime
    updated_at: dt.datetime


class WebhookWithSecret(Webhook):
    secret: str = Field(description="signing secret (whsec_...): shown only here, keep it")


class Attempt(ResponseModel):
    attempt: int
    attempted_at: dt.datetime
    status_code: int | None
    error: str | None
    response: str | None = Field(description="the start of the receiver's answer")
    duration_ms: int


class Delivery(ResponseModel):
    id: uuid.UUID
    webhook_id: str = Field(description="the webhook-id header (the same for every attempt and redelivery)")
    event_type: str
    occurred_at: dt.datetime
    status: Literal["pending", "delivered", "dead"]
    attempts: int
    next_attempt_at: dt.datetime | None
    last_status: int | None
    last_error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    attempt_log: list[Attempt] = Field(description=f"the latest {ATTEMPTS_SHOWN} attempts, oldest first")


class DeliveryQuery(PageQuery):
    status: Literal["pending", "delivered", "dead"] | None = None


async def _checked_url(url: str) -> str:
    try:
        await urls.resolve(url, allow_private=runtime().settings.webhook_allow_private_urls)
    except urls.Refused as exc:
        raise field_error("body", "url", str(exc), "url_refused") from None
    return url


def _delivery_out(row: Any, attempts: list[Any]) -> dict:
    out = dict(row)
    out["webhook_id"] = outbox.message_id(row["message_id"])
    if row["status"] != "pending":
        out["next_attempt_at"] = None
    out["attempt_log"] = [dict(a) for a in attempts[-ATTEMPTS_SHOWN:]]
    return out


async def _endpoint_or_404(conn, webhook_id: uuid.UUID, *, for_update: bool = False):
    row = await store.get_endpoint(conn, webhook_id, for_update=for_update)
    if row is None:
        raise not_found("webhook")
    return row


@blueprint.post("/api/v1/webhooks")
@customer_required("webhooks:write")
@operation(
    "Create a webhook endpoint (its signing secret is shown once)",
    tags=TAGS,
    body=WebhookCreate,
    response=WebhookWithSecret,
    status=201,
    errors=(409,),
)
async def create_webhook(body: WebhookCreate):
    url = await _checked_url(body.url)
    secret = endpoints.generate_secret()
    customer_id = principal().customer_id
    async with customer_transaction() as conn:
        # one endpoint creation at a time per customer, so the count below holds
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('webhook_endpoints'), hashtext($1))", customer_id)
        if await store.count_endpoints(conn) >= endpoints.MAX_ENDPOINTS:
            raise ApiError(
                409, "webhook_limit_reached", f"at most {endpoints.MAX_ENDPOINTS} webhook endpoints per customer"
            )
        row = await store.insert_endpoint(
            conn,
            customer_id,
            url=url,
            events=list(dict.fromkeys(body.events)),
            description=body.description,
            secret=secret,
        )
    return {**dict(row), "secret": secret}


@blueprint.get("/api/v1/webhooks")
@customer_required("webhooks:read")
@operation("List webhook endpoints", tags=TAGS, query=PageQuery, response=Page[Webhook])
async def list_webhooks(query: PageQuery):
    async with customer_transaction() as conn:
        rows = await store.list_endpoints(conn, after=pagination.decode(query.cursor), limit=query.limit)
    return pagination.page(rows, query.limit)


@blueprint.get("/api/v1/webhooks/<uuid:webhook_id>")
@customer_required("webhooks:read")
@operation("Show a webhook endpoint (disabled_reason says why it stopped)", tags=TAGS, response=Webhook)
async def show_webhook(webhook_id: uuid.UUID):
    async with customer_transaction() as conn:
        return dict(await _endpoint_or_404(conn, webhook_id))


@blueprint.patch("/api/v1/webhooks/<uuid:webhook_id>")
@customer_required("webhooks:write")
@operation(
    "Update a webhook endpoint; enabled=true resumes a disabled one", tags=TAGS, body=WebhookUpdate, response=Webhook
)
async def update_webhook(webhook_id: uuid.UUID, body: WebhookUpdate):
    changes = body.model_dump(exclude_unset=True)
    for name in ("url", "events", "description", "enabled"):
        if name in changes and changes[name] is None:
            raise field_error("body", name, "must not be null", "null_not_allowed")
    if "url" in changes:
        await _checked_url(changes["url"])
    async with customer_transaction() as conn:
        current = await _endpoint_or_404(conn, webhook_id, for_update=True)
        merged = {**dict(current), **changes}
        row = await store.update_endpoint(
            conn,
            webhook_id,
            url=merged["url"],
            events=list(dict.fromkeys(merged["events"])),
            description=merged["description"],
            enabled=merged["enabled"],
        )
    if row is None:
        raise not_found("webhook")
    return dict(row)


@blueprint.delete("/api/v1/webhooks/<uuid:webhook_id>")
@customer_required("webhooks:write")
@operation("Delete a webhook endpoint (its pending deliveries and log go with it)", tags=TAGS)
async def delete_webhook(webhook_id: uuid.UUID):
    async with customer_transaction() as conn:
        deleted = await store.delete_endpoint(conn, webhook_id)
    if not deleted:
        raise not_found("webhook")


@blueprint.post("/api/v1/webhooks/<uuid:webhook_id>/test")
@customer_required("webhooks:write")
@operation(
    "Send a test message (type webhook.test) to this endpoint; it is delivered like any other",
    tags=TAGS,
    response=Delivery,
    status=202,
    errors=(409,),
)
async def test_webhook(webhook_id: uuid.UUID):
    customer_id = uuid.UUID(principal().customer_id)
    async with customer_transaction() as conn:
        endpoint = await _endpoint_or_404(conn, webhook_id)
        if not endpoint["enabled"]:
            raise ApiError(409, "webhook_disabled", "the endpoint is disabled; enable it first (PATCH enabled=true)")
        message = endpoints.test_message(webhook_id)
        await outbox.publish_to(conn, customer_id, webhook_id, message)
        row = await store.enqueued_here(conn, webhook_id)
    if row is None:
        raise not_found("webhook")
    return _delivery_out(row, [])


@blueprint.get("/api/v1/webhooks/<uuid:webhook_id>/deliveries")
@customer_required("webhooks:read")
@operation(
    "The delivery log of an endpoint, newest first, with each delivery's latest attempts",
    tags=TAGS,
    query=DeliveryQuery,
    response=Page[Delivery],
)
async def list_deliveries(webhook_id: uuid.UUID, query: DeliveryQuery):
    async with customer_transaction() as conn:
        await _endpoint_or_404(conn, webhook_id)
        rows = await store.deliveries(
            conn, webhook_id, status=query.status, before=pagination.decode(query.cursor), limit=query.limit
        )
        attempts = await store.attempts_of(conn, [r["id"] for r in rows[: query.limit]])
    by_delivery: dict[uuid.UUID, list] = {}
    for a in attempts:
        by_delivery.setdefault(a["delivery_id"], []).append(a)
    return pagination.page(rows, query.limit, lambda r: _delivery_out(r, by_delivery.get(r["id"], [])))


@blueprint.post("/api/v1/webhooks/<uuid:webhook_id>/deliveries/<uuid:delivery_id>/redeliver")
@customer_required("webhooks:write")
@operation(
    "Send a delivery's message again (same webhook-id and body) as a new delivery",
    tags=TAGS,
    response=Delivery,
    status=202,
)
async def redeliver(webhook_id: uuid.UUID, delivery_id: uuid.UUID):
    customer_id = uuid.UUID(principal().customer_id)
    async with customer_transaction() as conn:
        await _endpoint_or_404(conn, webhook_id)
        row = await store.redeliver(conn, customer_id, webhook_id, delivery_id)
    if row is None:
        raise not_found("delivery")
    return _delivery_out(row, [])
