"""Stripe as the billing provider (issue 18): pushes to a local HTTP server playing Stripe's API
(the stripe package pointed at it through STRIPE_API_BASE), and webhooks signed the way Stripe
signs them (tests/support/stripe_api.sign: t=...,v1=HMAC-SHA256 of "t.body")."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid

import httpx
import pytest
import websockets

from sync_server.node.app import create_app

from ..support.server import ServerProcess
from ..support.stripe_api import FakeStripe, event, sign
from .conftest import OPERATOR_PASSWORD, Api, app_settings, bearer, error_of
from .test_fleet import _create_operator
from .test_suspension_closes_sync import _closed_with

SECRET_KEY = "sk_test_" + "4eC39HqLyjWDarjtT1zdp7dc"
WHSEC = "whsec_" + "test" * 8
HOOK = "/api/v1/billing/stripe/webhook"
PRICES = {"starter": "price_starter", "professional": "price_pro"}


@pytest.fixture
async def stripe_api():
    fake = await FakeStripe().start()
    yield fake
    await fake.close()


@contextlib.asynccontextmanager
async def billed_api(database_url, fake: FakeStripe, **overrides):
    """The app with Stripe configured against `fake` (the sync loop's timer far away: tests run rounds)."""
    settings = dataclasses.replace(
        app_settings(database_url),
        stripe_secret_key=SECRET_KEY,
        stripe_webhook_secret=WHSEC,
        stripe_api_base=fake.base,
        stripe_max_network_retries=2,
        stripe_sync_interval=3600.0,
        **overrides,
    )
    app = create_app(settings)
    async with app.test_app() as test_app:
        api = Api(app, test_app.test_client())
        ops = await api.operator()
        for plan_id, price in PRICES.items():
            r = await api.patch(f"/api/v1/plans/{plan_id}", headers=ops, json={"stripe_price_id": price})
            assert r.status_code == 200 and (await r.get_json())["stripe_price_id"] == price
        yield api


@pytest.fixture
async def api_s(database_url, stripe_api):
    async with billed_api(database_url, stripe_api) as api:
        yield api


async def account(api: Api, customer_id: str) -> dict:
    r = await api.get(f"/api/v1/customers/{customer_id}/billing", headers=await api.operator())
    assert r.status_code == 200, await r.get_data(as_text=True)
    return await r.get_json()


async def settled(api: Api, customer_id: str, *, failed: bool = False, timeout: float = 20.0) -> dict:
    """The account once its push is done (in sync), or with `failed` once an attempt failed."""
    deadline = time.monotonic() + timeout
    while True:
        body = await account(api, customer_id)
        if (body["attempts"] > 0) if failed else body["in_sync"]:
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def deliver(api: Api, event_type: str, obj: dict, created: int, *, event_id: str | None = None, **kw):
    body = event(event_id or f"evt_{uuid.uuid4().hex}", event_type, obj, created)
    headers = {"Stripe-Signature": kw.get("signature") or sign(body, WHSEC), "Content-Type": "application/json"}
    return await api.post(HOOK, data=body, headers=headers)


async def outcome(api: Api, *args, **kw) -> str:
    r = await deliver(api, *args, **kw)
    assert r.status_code == 200, await r.get_data(as_text=True)
    return (await r.get_json())["outcome"]


async def customer_row(api: Api, customer_id: str) -> dict:
    r = await api.get(f"/api/v1/customers/{customer_id}", headers=await api.operator())
    return await r.get_json()


def sub_event(fake: FakeStripe, sub_id: str, **changes) -> dict:
    return {**fake.subscriptions[sub_id], **changes}


async def subscribed(api: Api, fake: FakeStripe, plan_id: str = "starter"):
    c = await api.customer(plan_id=plan_id)
    body = await settled(api, c.id)
    return c, body["stripe_subscription_id"]


def suspensions(api: Api) -> list[str]:
    seen: list[str] = []

    async def listener(customer_id, **_ignored):
        seen.append(customer_id)

    api.runtime.subscribe("customer_suspended", listener)
    return seen


# --- without the key ---------------------------------------------------------------------------


async def test_without_a_key_billing_stays_internal(api):
    c = await api.customer(plan_id="starter")
    r = await api.post("/api/v1/subscription/change", headers=c.auth, json={"plan_id": "professional"})
    assert r.status_code == 200 and (await r.get_json())["plan_id"] == "professional"
    assert api.runtime.billing_provider is None
    body = await account(api, c.id)
    assert body["provider"] == "internal" and body["stripe_customer_id"] is None and body["in_sync"]
    async with api.runtime.db.operator("test") as conn:
        assert await conn.fetchval("SELECT count(*) FROM billing_accounts") == 0
    body = event("evt_1", "invoice.paid", {"id": "in_1", "customer": "cus_1"}, int(time.time()))
    r = await api.post(HOOK, data=body, headers={"Stripe-Signature": sign(body, WHSEC)})
    assert r.status_code == 404


# --- pushes ------------------------------------------------------------------------------------


async def test_create_and_plan_changes_reach_stripe_with_idempotency_keys(api_s, stripe_api):
    c = await api_s.customer(plan_id="starter", email="ops@alpha.example")
    body = await settled(api_s, c.id)
    assert body["provider"] == "stripe" and body["stripe_price_id"] == "price_starter"
    [made] = stripe_api.calls("POST", "/v1/customers")
    assert made.idempotency_key == f"webhost-{c.id}-customer-create"
    assert made.params["email"] == "ops@alpha.example" and made.params["metadata[webhost_customer_id]"] == c.id
    assert made.headers["authorization"] == f"Bearer {SECRET_KEY}"
    [sub_call] = stripe_api.calls("POST", "/v1/subscriptions")
    assert sub_call.idempotency_key == f"webhost-{c.id}-subscription-create-v1"
    assert (
        sub_call.params["items[0][price]"] == "price_starter"
        and sub_call.params["customer"] == body["stripe_customer_id"]
    )
    sub_id = body["stripe_subscription_id"]
    assert stripe_api.subscriptions[sub_id]["customer"] == body["stripe_customer_id"]

    r = await api_s.post("/api/v1/subscription/change", headers=c.auth, json={"plan_id": "professional"})
    assert r.status_code == 200
    body = await settled(api_s, c.id)
    assert body["stripe_price_id"] == "price_pro" and body["stripe_subscription_id"] == sub_id
    [update] = stripe_api.calls("POST", f"/v1/subscriptions/{sub_id}")
    assert update.idempotency_key == f"webhost-{c.id}-subscription-update-v2"
    assert (
        update.params["items[0][price]"] == "price_pro" and update.params["proration_behavior"] == "create_prorations"
    )
    assert stripe_api.subscriptions[sub_id]["items"]["data"][0]["price"]["id"] == "price_pro"

    r = await api_s.post("/api/v1/subscription/cancel", headers=c.auth)
    assert r.status_code == 200
    await settled(api_s, c.id)
    assert stripe_api.subscriptions[sub_id]["cancel_at_period_end"] is True

    # a free plan (no stripe_price_id): the Stripe subscription is canceled
    r = await api_s.post("/api/v1/subscription/change", headers=c.auth, json={"plan_id": "hobby"})
    assert r.status_code == 200
    body = await settled(api_s, c.id)
    assert body["stripe_subscription_id"] is None and stripe_api.subscriptions[sub_id]["status"] == "canceled"
    assert len(stripe_api.customers) == 1 and len(stripe_api.subscriptions) == 1


async def test_a_500_and_a_lost_answer_are_retried_without_double_creation(api_s, stripe_api):
    stripe_api.fail("POST", "/v1/customers", "500")  # an edge error: nothing done, retried
    stripe_api.fail("POST", "/v1/subscriptions", "drop")  # done at Stripe, the answer lost: replayed
    c = await api_s.customer(plan_id="starter")
    body = await settled(api_s, c.id)
    customers, subs = stripe_api.calls("POST", "/v1/customers"), stripe_api.calls("POST", "/v1/subscriptions")
    assert len(customers) == 2 and len({r.idempotency_key for r in customers}) == 1
    assert len(subs) == 2 and len({r.idempotency_key for r in subs}) == 1
    assert len(stripe_api.customers) == 1 and list(stripe_api.subscriptions) == [body["stripe_subscription_id"]]
    assert body["attempts"] == 0 and body["last_error"] is None


async def test_an_outage_keeps_the_plan_change_and_catches_up(api_s, stripe_api):
    c, sub_id = await subscribed(api_s, stripe_api)
    stripe_api.down = True
    r = await api_s.post("/api/v1/subscription/change", headers=c.auth, json={"plan_id": "professional"})
    assert r.status_code == 200  # the change never waits for Stripe
    body = await settled(api_s, c.id, failed=True)
    assert not body["in_sync"] and "status=503" in body["last_error"] and SECRET_KEY not in body["last_error"]
    r = await api_s.get("/api/v1/subscription", headers=c.auth)
    assert (await r.get_json())["plan_id"] == "professional"  # the database holds the change
    assert stripe_api.subscriptions[sub_id]["items"]["data"][0]["price"]["id"] == "price_starter"

    stripe_api.down = False
    async with api_s.runtime.db.operator("test") as conn:  # the retry is due (instead of waiting its backoff)
        await conn.execute("UPDATE billing_accounts SET next_attempt_at = now()")
    await api_s.runtime.billing_provider.round()
    body = await account(api_s, c.id)
    assert body["in_sync"] and body["attempts"] == 0 and body["last_error"] is None
    assert stripe_api.subscriptions[sub_id]["items"]["data"][0]["price"]["id"] == "price_pro"
    assert len(stripe_api.subscriptions) == 1


@pytest.mark.parametrize("lost", ["/v1/customers", "/v1/subscriptions"])
async def test_an_outage_at_creation_never_makes_a_second_one(api_s, stripe_api, lost):
    """The customer (or subscription) was made, but every answer was lost (past the client's
    retries): the next round finds it at Stripe by its metadata and adopts it."""
    stripe_api.fail("POST", lost, "drop", times=3)
    c = await api_s.customer(plan_id="starter")
    body = await settled(api_s, c.id, failed=True)
    assert body["stripe_subscription_id"] is None
    async with api_s.runtime.db.operator("test") as conn:
        # the retry is due now, for a newer version (the subscription create key changes with it)
        await conn.execute("UPDATE billing_accounts SET next_attempt_at = now(), wanted_version = wanted_version + 1")
    await api_s.runtime.billing_provider.round()
    body = await account(api_s, c.id)
    assert body["in_sync"] and body["stripe_subscription_id"] == next(iter(stripe_api.subscriptions))
    assert len(stripe_api.customers) == 1 and len(stripe_api.subscriptions) == 1
    found = stripe_api.calls("GET", "/v1/customers/search" if lost == "/v1/customers" else "/v1/subscriptions")
    assert found


async def test_customers_made_before_the_key_are_adopted(database_url, stripe_api):
    app = create_app(app_settings(database_url))
    async with app.test_app() as test_app:
        before = await Api(app, test_app.test_client()).customer(plan_id="starter")
    async with billed_api(database_url, stripe_api) as api:
        body = await settled(api, before.id)
        assert body["stripe_customer_id"] in stripe_api.customers and body["stripe_price_id"] == "price_starter"


# --- webhooks ----------------------------------------------------------------------------------


async def test_bad_signatures_and_payloads_are_400(api_s, stripe_api):
    now = int(time.time())
    body = event("evt_x", "invoice.paid", {"id": "in_1", "customer": "cus_x"}, now)
    cases = {
        "no header": {},
        "wrong secret": {"Stripe-Signature": sign(body, "whsec_other")},
        "too old": {"Stripe-Signature": sign(body, WHSEC, now - 3600)},
        "garbage": {"Stripe-Signature": "t=abc,v1=zz"},
        "another body": {"Stripe-Signature": sign(body + b" ", WHSEC)},
    }
    for name, headers in cases.items():
        r = await api_s.post(HOOK, data=body, headers=headers)
        assert r.status_code == 400, name
        assert (await error_of(r))["code"] == "bad_signature", name
    for bad in (b"not json", b"[1,2]", b'{"id": "evt_1"}', b"\xff\xfe"):
        r = await api_s.post(HOOK, data=bad, headers={"Stripe-Signature": sign(bad, WHSEC)})
        assert r.status_code == 400 and (await error_of(r))["code"] in ("bad_payload", "bad_signature"), bad
    big = b'{"pad": "' + b"x" * (300 * 1024) + b'"}'
    r = await api_s.post(HOOK, data=big, headers={"Stripe-Signature": sign(big, WHSEC)})
    assert r.status_code == 413
    async with api_s.runtime.db.operator("test") as conn:
        assert await conn.fetchval("SELECT count(*) FROM stripe_events") == 0
    assert await outcome(api_s, "charge.refunded", {"id": "ch_1", "customer": "cus_x"}, now) == "ignored"


async def test_replays_and_out_of_order_events_never_regress(api_s, stripe_api):
    c, sub_id = await subscribed(api_s, stripe_api)
    t0 = int(time.time())
    past_due = sub_event(stripe_api, sub_id, status="past_due")
    assert await outcome(api_s, "customer.subscription.updated", past_due, t0 + 20, event_id="evt_pd") == "applied"
    assert await outcome(api_s, "customer.subscription.updated", past_due, t0 + 20, event_id="evt_pd") == "replay"
    # older events arriving late: recorded, change nothing
    active = sub_event(stripe_api, sub_id, status="active")
    assert await outcome(api_s, "customer.subscription.updated", active, t0 + 10) == "stale"
    assert await outcome(api_s, "customer.subscription.created", active, t0) == "stale"
    body = await account(api_s, c.id)
    assert body["subscription_status"] == "past_due" and body["past_due_since"] is not None
    outcomes = {e["id"]: e["outcome"] for e in body["events"]}
    assert outcomes["evt_pd"] == "applied" and list(outcomes.values()).count("stale") == 2
    async with api_s.runtime.db.operator("test") as conn:
        assert await conn.fetchval("SELECT count(*) FROM stripe_events WHERE id = 'evt_pd'") == 1
    # same second: the later status in a subscription's life wins; canceled is final
    assert await outcome(api_s, "customer.subscription.updated", active, t0 + 20) == "stale"
    ended = sub_event(stripe_api, sub_id, status="canceled")
    assert await outcome(api_s, "customer.subscription.deleted", ended, t0 + 30) == "applied"
    assert await outcome(api_s, "customer.subscription.updated", active, t0 + 40) == "stale"
    assert (await account(api_s, c.id))["subscription_status"] == "canceled"
    # an invoice paid after a later failure arrives: stale
    invoice = {"id": "in_1", "object": "invoice", "customer": stripe_api.subscriptions[sub_id]["customer"]}
    assert await outcome(api_s, "invoice.payment_failed", {**invoice, "subscription": sub_id}, t0 + 50) == "applied"
    assert await outcome(api_s, "invoice.paid", {**invoice, "subscription": sub_id}, t0 + 45) == "stale"
    assert (await account(api_s, c.id))["invoice_status"] == "payment_failed"


async def test_the_same_event_delivered_twice_at_once_is_applied_once(api_s, stripe_api):
    c, sub_id = await subscribed(api_s, stripe_api)
    obj = sub_event(stripe_api, sub_id, status="past_due")
    results = await asyncio.gather(
        *(
            outcome(api_s, "customer.subscription.updated", obj, int(time.time()), event_id="evt_twice")
            for _ in range(4)
        )
    )
    assert sorted(results) == ["applied", "replay", "replay", "replay"]


async def test_past_due_grace_then_suspension_and_a_paid_invoice_reactivates(api_s, stripe_api):
    c, sub_id = await subscribed(api_s, stripe_api)
    seen = suspensions(api_s)
    t0 = int(time.time())
    stripe_customer = stripe_api.subscriptions[sub_id]["customer"]
    failed = {"id": "in_9", "object": "invoice", "customer": stripe_customer, "subscription": sub_id}
    assert await outcome(api_s, "invoice.payment_failed", failed, t0) == "applied"
    assert (
        await outcome(api_s, "customer.subscription.updated", sub_event(stripe_api, sub_id, status="past_due"), t0 + 1)
        == "applied"
    )
    assert (await customer_row(api_s, c.id))["status"] == "active"  # within the grace period (7 days)
    await api_s.runtime.billing_provider.round()
    assert (await customer_row(api_s, c.id))["status"] == "active" and seen == []

    async with api_s.runtime.db.operator("test") as conn:  # the grace period has passed
        await conn.execute("UPDATE billing_accounts SET past_due_since = now() - interval '8 days'")
    await api_s.runtime.billing_provider.round()
    row = await customer_row(api_s, c.id)
    assert row["status"] == "suspended" and row["suspended_by"] == "billing"
    assert seen == [c.id]  # the one suspend path: Runtime.publish("customer_suspended") closes sockets
    r = await api_s.get("/api/v1/subscription", headers=c.auth)
    assert r.status_code == 403 and (await error_of(r))["code"] == "customer_suspended"

    assert await outcome(api_s, "invoice.paid", {**failed, "status": "paid"}, t0 + 5) == "applied"
    row = await customer_row(api_s, c.id)
    assert row["status"] == "active" and row["suspended_by"] is None
    assert (await api_s.get("/api/v1/subscription", headers=c.auth)).status_code == 200


async def test_canceled_suspends_at_period_end(api_s, stripe_api):
    c, sub_id = await subscribed(api_s, stripe_api)
    seen = suspensions(api_s)
    t0 = int(time.time())
    sub = stripe_api.subscriptions[sub_id]
    ended = sub_event(stripe_api, sub_id, status="canceled")
    assert await outcome(api_s, "customer.subscription.deleted", ended, t0) == "applied"
    assert (await customer_row(api_s, c.id))["status"] == "active"  # paid until current_period_end
    body = await account(api_s, c.id)
    assert body["current_period_end"] is not None and body["subscription_status"] == "canceled"

    async with api_s.runtime.db.operator("test") as conn:
        await conn.execute("UPDATE billing_accounts SET current_period_end = now() - interval '1 second'")
    await api_s.runtime.billing_provider.round()
    assert (await customer_row(api_s, c.id))["suspended_by"] == "billing" and seen == [c.id]
    # a paid invoice does not bring a canceled subscription back
    invoice = {"id": "in_2", "object": "invoice", "customer": sub["customer"], "subscription": sub_id}
    assert await outcome(api_s, "invoice.paid", invoice, t0 + 1) == "applied"
    assert (await customer_row(api_s, c.id))["status"] == "suspended"


async def test_billing_never_lifts_an_operator_suspension_nor_overrules_an_operator(database_url, stripe_api):
    async with billed_api(database_url, stripe_api, stripe_past_due_grace=0.0) as api:
        ops = await api.operator()
        c, sub_id = await subscribed(api, stripe_api)
        sub = stripe_api.subscriptions[sub_id]
        t0 = int(time.time()) - 60  # events from the last minute
        assert (await api.post(f"/api/v1/customers/{c.id}/suspend", headers=ops)).status_code == 200
        paid = {"id": "in_3", "object": "invoice", "customer": sub["customer"], "subscription": sub_id}
        assert await outcome(api, "invoice.paid", paid, t0) == "applied"
        row = await customer_row(api, c.id)
        assert row["status"] == "suspended" and row["suspended_by"] == "operator"

        # grace 0: past due suspends at once (for billing); the operator reactivates and is not overruled
        assert (await api.post(f"/api/v1/customers/{c.id}/reactivate", headers=ops)).status_code == 200
        past_due = sub_event(stripe_api, sub_id, status="past_due")
        assert await outcome(api, "customer.subscription.updated", past_due, t0 + 1) == "applied"
        assert (await customer_row(api, c.id))["suspended_by"] == "billing"
        assert (await api.post(f"/api/v1/customers/{c.id}/reactivate", headers=ops)).status_code == 200
        await api.runtime.billing_provider.round()
        assert (await customer_row(api, c.id))["status"] == "active"
        # until Stripe reports something newer
        failed = {**paid, "id": "in_4"}
        assert await outcome(api, "invoice.payment_failed", failed, t0 + 2) == "applied"
        assert (await customer_row(api, c.id))["suspended_by"] == "billing"


async def test_a_price_changed_at_stripe_is_pushed_back(api_s, stripe_api):
    c, sub_id = await subscribed(api_s, stripe_api)
    changed = sub_event(stripe_api, sub_id)
    changed["items"] = {"object": "list", "data": [{**changed["items"]["data"][0], "price": {"id": "price_other"}}]}
    assert await outcome(api_s, "customer.subscription.updated", changed, int(time.time())) == "applied"
    body = await account(api_s, c.id)
    assert not body["in_sync"]
    await api_s.runtime.billing_provider.round()
    assert (await account(api_s, c.id))["in_sync"]
    assert stripe_api.calls("POST", f"/v1/subscriptions/{sub_id}")[-1].params["items[0][price]"] == "price_starter"


async def test_events_for_unknown_customers_are_recorded_and_ignored(api_s, stripe_api):
    now = int(time.time())
    obj = {"id": "sub_nobody", "object": "subscription", "customer": "cus_nobody", "status": "canceled"}
    assert await outcome(api_s, "customer.subscription.deleted", obj, now) == "ignored"
    async with api_s.runtime.db.operator("test") as conn:
        row = await conn.fetchrow("SELECT customer_id, outcome FROM stripe_events")
    assert row["customer_id"] is None and row["outcome"] == "ignored"


# --- through a real server process: the suspension closes the customer's sockets -----------------


async def test_a_past_due_webhook_closes_the_customers_websockets(server_env, stripe_api, tmp_path):
    env = {
        **server_env,
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": WHSEC,
        "STRIPE_API_BASE": stripe_api.base,
        "STRIPE_PAST_DUE_GRACE_HOURS": "0",
    }
    _create_operator(env, "ops@example.com")
    proc = await asyncio.to_thread(ServerProcess(env, log_path=tmp_path / "server.log").start)
    try:
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=30) as http:
            r = await http.post("/api/v1/auth/login", json={"email": "ops@example.com", "password": OPERATOR_PASSWORD})
            ops = bearer(r.json()["token"])
            r = await http.patch("/api/v1/plans/starter", headers=ops, json={"stripe_price_id": "price_starter"})
            assert r.status_code == 200
            a = (
                await http.post(
                    "/api/v1/customers", headers=ops, json={"slug": "alpha", "name": "A", "plan_id": "starter"}
                )
            ).json()
            b = (
                await http.post(
                    "/api/v1/customers", headers=ops, json={"slug": "bravo", "name": "B", "plan_id": "starter"}
                )
            ).json()
            deadline = time.monotonic() + 30
            while len(stripe_api.subscriptions) < 2:  # both pushed to "Stripe" by the server
                assert time.monotonic() < deadline, stripe_api.requests
                await asyncio.sleep(0.1)
            sockets = {}
            for created in (a, b):
                r = await http.post(
                    "/api/v1/sync-tokens",
                    headers=bearer(created["api_key"]["key"]),
                    json={"docs": ["fleet"], "mode": "rw", "ttl_seconds": 300},
                )
                ws = await websockets.connect(
                    f"{proc.ws_url}/sync/{created['customer']['slug']}/fleet?token={r.json()['token']}"
                )
                await ws.recv()  # live
                sockets[created["customer"]["slug"]] = ws
            sub = next(s for s in stripe_api.subscriptions.values() if s["metadata"]["webhost_slug"] == "alpha")
            body = event(
                "evt_e2e", "customer.subscription.updated", {**sub, "status": "past_due"}, int(time.time()) - 5
            )
            r = await http.post(HOOK, content=body, headers={"Stripe-Signature": sign(body, WHSEC)})
            assert r.status_code == 200 and r.json()["outcome"] == "applied"
            assert await _closed_with(sockets["alpha"]) == 4403
            assert sockets["bravo"].close_code is None  # the other customer is untouched
            r = await http.get(f"/api/v1/customers/{a['customer']['id']}", headers=ops)
            assert r.json()["suspended_by"] == "billing"
            await sockets["bravo"].close()
            invoice = {
                "id": "in_e2e",
                "object": "invoice",
                "customer": sub["customer"],
                "customer_email": "pii@alpha.example",
            }
            body = event("evt_e2e_2", "invoice.payment_failed", invoice, int(time.time()) - 4)
            r = await http.post(HOOK, content=body, headers={"Stripe-Signature": sign(body, WHSEC)})
            assert r.status_code == 200
    finally:
        await asyncio.to_thread(proc.stop)
    logged = (tmp_path / "server.log").read_text()
    assert "stripe_event" in logged and "evt_e2e_2" in logged
    assert SECRET_KEY not in logged and WHSEC not in logged and "pii@alpha.example" not in logged


async def test_deleting_a_customer_cancels_its_stripe_subscription(api_s, stripe_api):
    c, sub_id = await subscribed(api_s, stripe_api)
    obj = sub_event(stripe_api, sub_id, status="active")
    assert (
        await outcome(api_s, "customer.subscription.updated", obj, int(time.time()), event_id="evt_kept") == "applied"
    )
    r = await api_s.delete(f"/api/v1/customers/{c.id}", headers=await api_s.operator())
    assert r.status_code == 204
    async with api_s.runtime.db.operator("test") as conn:  # the event stays recorded, the account goes
        assert await conn.fetchval("SELECT customer_id FROM stripe_events WHERE id = 'evt_kept'") is None
        assert await conn.fetchval("SELECT count(*) FROM billing_accounts") == 0
    deadline = time.monotonic() + 20
    while stripe_api.subscriptions[sub_id]["status"] != "canceled":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    [cancel] = stripe_api.calls("DELETE", f"/v1/subscriptions/{sub_id}")
    assert cancel.idempotency_key == f"webhost-{c.id}-subscription-cancel-{sub_id}"


async def test_concurrent_pushers_push_a_change_once(api_s, stripe_api):
    """Several pushers at once (nodes' sync rounds, the change's own job): the lease lets one through."""
    c, sub_id = await subscribed(api_s, stripe_api)
    stripe_api.down = True
    r = await api_s.post("/api/v1/subscription/change", headers=c.auth, json={"plan_id": "professional"})
    assert r.status_code == 200
    await settled(api_s, c.id, failed=True)
    stripe_api.down = False
    async with api_s.runtime.db.operator("test") as conn:
        await conn.execute("UPDATE billing_accounts SET next_attempt_at = now()")
    before = len(stripe_api.requests)
    sync = api_s.runtime.billing_provider
    await asyncio.gather(sync.round(), sync.round(), sync.push(c.id), sync.push(c.id), sync.push(c.id))
    updates = [
        r for r in stripe_api.requests[before:] if r.method == "POST" and r.path == f"/v1/subscriptions/{sub_id}"
    ]
    assert len(updates) == 1 and updates[0].params["items[0][price]"] == "price_pro"
    assert (await account(api_s, c.id))["in_sync"]


async def test_signed_but_malformed_objects_are_answered_not_crashed_on(api_s, stripe_api):
    c, sub_id = await subscribed(api_s, stripe_api)
    stripe_customer = stripe_api.subscriptions[sub_id]["customer"]
    now = int(time.time())
    odd = [
        {"id": sub_id, "customer": stripe_customer, "status": "active", "items": {"data": ["x", 3]}},
        {"id": sub_id, "customer": stripe_customer, "status": "active", "items": [1], "current_period_end": "soon"},
        {"id": sub_id, "customer": {"id": stripe_customer}, "status": "x" * 500},
        {"id": 7, "customer": stripe_customer, "status": "active"},
        {"id": sub_id, "customer": ["cus"], "status": "active"},
    ]
    for i, obj in enumerate(odd):
        r = await deliver(api_s, "customer.subscription.updated", obj, now + i)
        assert r.status_code == 200, (obj, await r.get_data(as_text=True))
    r = await deliver(api_s, "invoice.paid", {"id": "in_x", "customer": stripe_customer, "parent": "p"}, now + 10)
    assert r.status_code == 200
    assert (await customer_row(api_s, c.id))["status"] == "active"


async def test_an_operators_plan_change_reaches_stripe(api_s, stripe_api):
    c, sub_id = await subscribed(api_s, stripe_api)
    r = await api_s.post(
        f"/api/v1/customers/{c.id}/plan", headers=await api_s.operator(), json={"plan_id": "professional"}
    )
    assert r.status_code == 200, await r.get_data(as_text=True)
    body = await settled(api_s, c.id)
    assert body["stripe_price_id"] == "price_pro"
    assert stripe_api.subscriptions[sub_id]["items"]["data"][0]["price"]["id"] == "price_pro"


async def test_a_new_name_or_email_reaches_the_stripe_customer(api_s, stripe_api):
    c, _sub = await subscribed(api_s, stripe_api)
    ops = await api_s.operator()
    r = await api_s.patch(f"/api/v1/customers/{c.id}", headers=ops, json={"metadata": {"tier": "gold"}})
    assert r.status_code == 200
    assert stripe_api.calls("POST", "/v1/customers/") == []  # nothing Stripe holds changed
    r = await api_s.patch(
        f"/api/v1/customers/{c.id}", headers=ops, json={"name": "Alpha Fleet", "email": "bill@alpha.example"}
    )
    assert r.status_code == 200
    body = await settled(api_s, c.id)
    [update] = stripe_api.calls("POST", f"/v1/customers/{body['stripe_customer_id']}")
    assert update.idempotency_key == f"webhost-{c.id}-customer-update-v2"
    assert stripe_api.customers[body["stripe_customer_id"]]["email"] == "bill@alpha.example"
    assert stripe_api.customers[body["stripe_customer_id"]]["name"] == "Alpha Fleet"


async def test_pushes_the_outbox_and_webhook_outcomes_are_in_the_metrics(api_s, stripe_api):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[tuple[str, str], float]:
        text = api_s.runtime.metrics.render().decode()
        return {
            (s.name, ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            if family.name.startswith("webhost_stripe")
            for s in family.samples
        }

    c, sub_id = await subscribed(api_s, stripe_api)
    stripe_api.down = True
    r = await api_s.post("/api/v1/subscription/change", headers=c.auth, json={"plan_id": "professional"})
    assert r.status_code == 200
    await settled(api_s, c.id, failed=True)
    await api_s.runtime.metrics.refresh_database()
    t0 = int(time.time())
    past_due = sub_event(stripe_api, sub_id, status="past_due")
    assert await outcome(api_s, "customer.subscription.updated", past_due, t0, event_id="evt_m") == "applied"
    assert await outcome(api_s, "customer.subscription.updated", past_due, t0, event_id="evt_m") == "replay"
    r = await deliver(api_s, "invoice.paid", {"id": "in_1", "customer": "cus_x"}, t0, signature="t=1,v1=00")
    assert r.status_code == 400
    seen = scrape()
    assert seen[("webhost_stripe_pushes_total", "result=pushed")] >= 1
    assert seen[("webhost_stripe_pushes_total", "result=failed")] >= 1
    assert seen[("webhost_stripe_pending_customers", "")] == 1
    assert seen[("webhost_stripe_failing_customers", "")] == 1
    for name, n in (("applied", 1), ("replay", 1), ("bad_signature", 1), ("stale", 0)):
        assert seen[("webhost_stripe_webhook_events_total", f"outcome={name}")] == n, name

    stripe_api.down = False  # caught up: the gauges go back to 0
    async with api_s.runtime.db.operator("test") as conn:
        await conn.execute("UPDATE billing_accounts SET next_attempt_at = now()")
    await api_s.runtime.billing_provider.round()
    await api_s.runtime.metrics.refresh_database()
    seen = scrape()
    assert seen[("webhost_stripe_pending_customers", "")] == 0 and seen[("webhost_stripe_failing_customers", "")] == 0
