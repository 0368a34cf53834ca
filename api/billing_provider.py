"""Stripe as the billing provider: the webhook Stripe posts to (signed, no other credential) and,
for operators, a customer's billing account (Stripe ids, push state, what Stripe reported)."""

from __future__ import annotations

import datetime as dt
import uuid

from quart import Blueprint

from api.current import runtime
from storage import billing_accounts as account_store
from storage import customers as customer_store
from sync_server.domain.billing import stripe_events

from . import calls
from .auth import operator_required
from .calls import principal
from .errors import ApiError, not_found
from .openapi import operation
from .schemas import ResponseModel

blueprint = Blueprint("billing_provider", __name__)
TAGS = ["billing provider (Stripe)"]


class WebhookReceived(ResponseModel):
    received: bool
    outcome: str  # applied, stale (older than the state held), ignored (not for us), replay (seen before)


@blueprint.post("/api/v1/billing/stripe/webhook")
@operation(
    "Stripe's webhook: subscription and invoice events, verified with Stripe-Signature",
    tags=TAGS,
    response=WebhookReceived,
    errors=(400, 404, 413),
    raw_body={"application/json": {"type": "object", "description": "a Stripe event"}},
    description="Signed by Stripe with STRIPE_WEBHOOK_SECRET (404 while unset). A replayed event id, an "
    "event older than the state held or one for no customer of ours is answered 200 and changes nothing.",
)
async def stripe_webhook():
    rt = runtime()
    secret = rt.settings.stripe_webhook_secret
    if not secret:
        raise ApiError(404, "not_found", "the Stripe webhook is not configured (STRIPE_WEBHOOK_SECRET)")
    call = calls.current()
    limit = stripe_events.MAX_BODY_BYTES
    declared = call.headers.get("content-length", "")
    count = rt.metrics.count_stripe_event if rt.metrics is not None else (lambda outcome: None)
    if declared.isdigit() and int(declared) > limit:
        count("too_large")
        raise ApiError(413, "payload_too_large", f"webhook body larger than {limit} bytes")
    payload = await call.body()
    if len(payload) > limit:
        count("too_large")
        raise ApiError(413, "payload_too_large", f"webhook body larger than {limit} bytes")
    header = call.headers.get("stripe-signature")
    try:
        if header is not None and len(header) > 4096:
            raise stripe_events.BadWebhook("bad_signature", "Stripe-Signature header too long")
        event = stripe_events.verify(payload, header, secret, rt.settings.stripe_webhook_tolerance)
    except stripe_events.BadWebhook as exc:
        count(exc.code)
        raise ApiError(400, exc.code, exc.message) from None
    outcome = await stripe_events.receive(rt, event)
    count(outcome)
    return {"received": True, "outcome": outcome}


class BillingEvent(ResponseModel):
    id: str
    type: str
    created: int
    object_id: str | None
    outcome: str
    received_at: dt.datetime


class BillingAccount(ResponseModel):
    customer_id: uuid.UUID
    provider: str  # "stripe", or "internal" without STRIPE_SECRET_KEY
    stripe_customer_id: str | None = None
    stripe_subscription_id: str | None = None
    stripe_price_id: str | None = None
    cancel_at_period_end: bool = False
    in_sync: bool = True  # false while a change waits to reach Stripe
    attempts: int = 0
    next_attempt_at: dt.datetime | None = None
    last_error: str | None = None
    pushed_at: dt.datetime | None = None
    subscription_status: str | None = None
    current_period_end: dt.datetime | None = None
    past_due_since: dt.datetime | None = None
    invoice_status: str | None = None
    events: list[BillingEvent] = []


@blueprint.get("/api/v1/customers/<uuid:customer_id>/billing")
@operator_required()
@operation(
    "A customer's billing account at the provider: Stripe ids, push state, reported subscription state",
    tags=TAGS,
    response=BillingAccount,
)
async def show_billing_account(customer_id: uuid.UUID):
    rt = runtime()
    async with rt.db.operator(
        "show_billing_account", customer_id=str(customer_id), operator_id=principal().user_id
    ) as conn:
        if await customer_store.get(conn, customer_id) is None:
            raise not_found("customer")
        account = await account_store.get(conn, customer_id)
        events = await account_store.events_of(conn, customer_id)
    provider = "stripe" if rt.billing_provider is not None else "internal"
    if account is None:
        return {"customer_id": customer_id, "provider": provider, "in_sync": provider == "internal"}
    return {
        **dict(account),
        "provider": provider,
        "in_sync": account["pushed_version"] >= account["wanted_version"],
        "events": [dict(e) for e in events],
    }
