"""Stripe's webhooks (POST /api/v1/billing/stripe/webhook): verified, recorded once, applied in any
arrival order, and the billing policy (policy.py) applied after each.

- Verification: `Stripe-Signature` (t=<unix>,v1=<HMAC-SHA256 of "<t>.<body>" under
  STRIPE_WEBHOOK_SECRET>) checked by the stripe package (`WebhookSignature.verify_header`, with its
  STRIPE_WEBHOOK_TOLERANCE_SECONDS replay window); the body at most MAX_BODY_BYTES.
- Once: each event id is recorded in stripe_events in the transaction that applies it; a replay
  (Stripe retries until it gets a 2xx, and may send an event twice) is a no-op answered 200.
- Any order: subscription events update the account only when newer (`created`) than the state it
  holds (a tie: the later status in a subscription's life wins); a canceled subscription never comes
  back; invoice events likewise by their own recency (a tie: paid wins). An older event is recorded
  as `stale` and changes nothing.
- Events handled: customer.subscription.created / updated / deleted, invoice.paid,
  invoice.payment_failed; any other type is recorded as `ignored`.
Logs carry the event id, type, customer and outcome, never the payload (it holds names, emails).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import asyncpg
import structlog

from storage import billing_accounts as store
from sync_server.domain.accounts import customers as customer_service
from sync_server.domain.billing import policy
from sync_server.domain.runtime import Runtime

log = structlog.get_logger("sync_server.domain.billing.stripe_events")

MAX_BODY_BYTES = 256 * 1024  # Stripe's events are a few KB; larger is not Stripe
SUBSCRIPTION_EVENTS = frozenset(
    {"customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted"}
)
INVOICE_EVENTS = frozenset({"invoice.paid", "invoice.payment_failed"})
# a subscription's statuses in the order they can follow each other (a tie in `created` is broken by it)
_LIFE = {"incomplete": 0, "trialing": 1, "active": 2, "paused": 2, "past_due": 3, "unpaid": 4}
_FINAL = 9  # canceled, incomplete_expired
_ID_MAX = 255


class BadWebhook(Exception):
    """Refused with 400: `code` is bad_signature or bad_payload."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def verify(payload: bytes, header: str | None, secret: str, tolerance: int) -> dict:
    """The event of a signed body, or BadWebhook."""
    import stripe

    try:
        stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
    except stripe.SignatureVerificationError:
        raise BadWebhook("bad_signature", "Stripe-Signature does not verify (secret, timestamp or body)") from None
    except UnicodeDecodeError:
        raise BadWebhook("bad_payload", "body is not UTF-8") from None
    try:
        event = json.loads(payload)
    except ValueError:
        raise BadWebhook("bad_payload", "body is not JSON") from None
    if not isinstance(event, dict):
        raise BadWebhook("bad_payload", "body is not a JSON object")
    event_id, event_type, created = event.get("id"), event.get("type"), event.get("created")
    obj = (event.get("data") or {}).get("object") if isinstance(event.get("data"), dict) else None
    if not (isinstance(event_id, str) and 0 < len(event_id) <= _ID_MAX):
        raise BadWebhook("bad_payload", "event id missing or too long")
    if not (isinstance(event_type, str) and 0 < len(event_type) <= 100):
        raise BadWebhook("bad_payload", "event type missing or too long")
    if not (isinstance(created, int) and not isinstance(created, bool) and 0 <= created < 2**40):
        raise BadWebhook("bad_payload", "event created missing or not a unix time")
    if not isinstance(obj, dict):
        raise BadWebhook("bad_payload", "event data.object missing")
    return event


def _ref(value: Any) -> str | None:
    """A Stripe id, given as the id or as the expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and 0 < len(value) <= _ID_MAX else None


def _time(value: Any) -> dt.datetime | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**40:
        return dt.datetime.fromtimestamp(value, dt.UTC)
    return None


def _items(sub: dict) -> list[dict]:
    """The subscription's items (what of them is well formed)."""
    items = sub.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    return [i for i in data if isinstance(i, dict)] if isinstance(data, list) else []


def _period_end(sub: dict) -> dt.datetime | None:
    """current_period_end: on the subscription (older API versions) or on its items (2025-03+)."""
    end = _time(sub.get("current_period_end"))
    if end is None:
        ends = [_time(i.get("current_period_end")) for i in _items(sub)]
        end = max((e for e in ends if e is not None), default=None)
    return end


def _price(sub: dict) -> str | None:
    items = _items(sub)
    return _ref(items[0].get("price")) if items else None


def _rank(status: str | None) -> int:
    return _FINAL if status in policy.ENDED else _LIFE.get(status or "", -1)


def subscription_change(account: asyncpg.Record, created: int, sub: dict) -> tuple[dict | None, str]:
    """The account columns a subscription event sets, and the outcome (applied / stale / ignored)."""
    sub_id, status = _ref(sub.get("id")), sub.get("status")
    if sub_id is None or not isinstance(status, str) or len(status) > 40:
        return None, "ignored"
    tracked = account["stripe_subscription_id"]
    state: dict[str, Any] = {}
    if tracked != sub_id:
        # a subscription we do not track: taken over only when ours is none or over, and it is live
        if not (tracked is None or account["subscription_status"] in policy.ENDED) or status in policy.ENDED:
            return None, "ignored"
        state["stripe_subscription_id"] = sub_id
        items = _items(sub)
        state["stripe_item_id"] = _ref(items[0].get("id")) if items else None
    else:
        old_status, old_at = account["subscription_status"], account["status_at"]
        if old_status in policy.ENDED:
            return None, "stale"  # a canceled subscription never comes back
        if created < old_at or (created == old_at and _rank(status) < _rank(old_status)):
            return None, "stale"
    state.update(subscription_status=status, status_at=created, current_period_end=_period_end(sub))
    invoice, invoice_at = account["invoice_status"], account["invoice_at"]
    if status in policy.PAST_DUE:
        paid_since = invoice == "paid" and invoice_at >= created
        if account["past_due_since"] is None and not paid_since:
            state["past_due_since"] = _time(created)
    elif status in policy.IN_GOOD_STANDING:
        if not (invoice == "payment_failed" and invoice_at > created):
            state["past_due_since"] = None
    price = _price(sub)
    ours = account["stripe_price_id"]
    if (
        tracked == sub_id
        and status not in policy.ENDED
        and ours
        and price
        and price != ours
        and account["pushed_version"] >= account["wanted_version"]
    ):
        # changed at Stripe, not by us: the plan in the database is what the customer has, push it back
        log.warning("stripe_price_drift", customer_id=str(account["customer_id"]), stripe_price=price, ours=ours)
        state["stripe_price_id"] = price  # what Stripe holds now: the push then updates it
        state["wanted_version"] = account["wanted_version"] + 1
        state["next_attempt_at"] = dt.datetime.now(dt.UTC)
    return state, "applied"


def invoice_change(account: asyncpg.Record, created: int, event_type: str, invoice: dict) -> tuple[dict | None, str]:
    sub = _ref(invoice.get("subscription"))
    if sub is None:  # 2025-03+ API versions: under parent.subscription_details
        parent = invoice.get("parent")
        details = parent.get("subscription_details") if isinstance(parent, dict) else None
        sub = _ref(details.get("subscription")) if isinstance(details, dict) else None
    if sub is not None and account["stripe_subscription_id"] not in (None, sub):
        return None, "ignored"  # an invoice of a subscription we no longer track
    new = "paid" if event_type == "invoice.paid" else "payment_failed"
    old, old_at = account["invoice_status"], account["invoice_at"]
    if created < old_at or (created == old_at and old == "paid" and new == "payment_failed"):
        return None, "stale"
    state: dict[str, Any] = {"invoice_status": new, "invoice_at": created}
    status, status_at = account["subscription_status"], account["status_at"]
    if new == "paid":
        if not (status in policy.PAST_DUE and status_at > created):
            state["past_due_since"] = None
    elif account["past_due_since"] is None and not (status in policy.IN_GOOD_STANDING and status_at > created):
        state["past_due_since"] = _time(created)
    return state, "applied"


async def receive(rt: Runtime, event: dict) -> str:
    """Apply a verified event; returns its outcome (applied, stale, ignored, or replay)."""
    event_id, event_type, created = event["id"], event["type"], event["created"]
    obj = event["data"]["object"]
    customer_id, status = None, None
    async with rt.db.operator("stripe_webhook", event_id=event_id, event_type=event_type) as conn:
        if not await store.record_event(conn, event_id, event_type, created, _ref(obj.get("id"))):
            outcome = "replay"
        else:
            outcome = "ignored"
            stripe_customer = _ref(obj.get("customer"))
            account = await store.by_stripe_customer(conn, stripe_customer) if stripe_customer else None
            state = None
            if account is not None:
                customer_id = account["customer_id"]
                if event_type in SUBSCRIPTION_EVENTS:
                    state, outcome = subscription_change(account, created, obj)
                elif event_type in INVOICE_EVENTS:
                    state, outcome = invoice_change(account, created, event_type, obj)
            if state:
                await store.apply_state(conn, customer_id, state)
            await store.set_event_outcome(conn, event_id, customer_id, outcome)
            status = await _hold(conn, customer_id, rt) if outcome == "applied" else None
    log.info(
        "stripe_event",
        event_id=event_id,
        event_type=event_type,
        customer_id=str(customer_id) if customer_id else None,
        outcome=outcome,
    )
    if outcome == "applied" and status is not None:
        await _announce(rt, customer_id, status, event_type)
    return outcome


async def _hold(conn: asyncpg.Connection, customer_id, rt: Runtime) -> str | None:
    """Apply the policy to the customer's account in the caller's transaction; the new customer
    status when it changed (announced after the commit)."""
    account = await store.get(conn, customer_id, for_update=True)
    if account is None:
        return None
    grace = dt.timedelta(hours=rt.settings.stripe_past_due_grace)
    action = policy.decide(account, now=dt.datetime.now(dt.UTC), grace=grace)
    if action == "reactivate":
        if await customer_service.billing_hold(conn, customer_id, suspend=False):
            await store.set_suspended_for(conn, customer_id, None)
            return "active"
    elif policy.suspends_now(account, action):
        await store.set_suspended_for(conn, customer_id, policy.state_key(account))
        if await customer_service.billing_hold(conn, customer_id, suspend=True):
            return "suspended"
    return None


async def _announce(rt: Runtime, customer_id, status: str, cause: str) -> None:
    log.info("billing_customer_status", customer_id=str(customer_id), status=status, cause=cause)
    await customer_service.announce_status(rt, customer_id, status)


async def enforce(rt: Runtime, customer_id) -> str | None:
    """The policy applied now (its timers: grace periods, period ends); the new status or None."""
    async with rt.db.operator("stripe_policy", customer_id=str(customer_id)) as conn:
        status = await _hold(conn, customer_id, rt)
    if status is not None:
        await _announce(rt, customer_id, status, "policy_timer")
    return status
