"""Pushing customers and plans to Stripe (with STRIPE_SECRET_KEY): an outbox in billing_accounts.

A change Stripe must hear about (a customer created or renamed, a plan changed, a cancel at period
end) calls `changed(rt, conn, customer_id)` in the transaction that makes it: one more `wanted_version` is
written with the change, so the change commits whatever Stripe does and is never lost. After the
commit `wake` pushes it at once in a background job; every node's sync loop (`StripeSync.run`,
every STRIPE_SYNC_INTERVAL_SECONDS) retries what failed, with backoff, and applies the billing
policy's timers. While a push fails, the account shows it (`attempts`, `last_error`, GET
/api/v1/customers/{id}/billing, a `stripe_push_failed` warning each time): the database (the plan
that limits the customer) and Stripe (what it is billed) may differ only visibly and until Stripe
answers again.

Pushing reads the customer's state *now* (its active plan's `stripe_price_id`, cancel flag) under a
lease (one pusher per customer across nodes) and makes Stripe hold it:
- no Stripe customer yet: create it (idempotency key `webhost-<id>-customer-create`), after a
  failed attempt first searching for one (metadata.webhost_customer_id) an earlier request made;
  its name or email changed since (`pushed_profile`): update it
  (`webhost-<id>-customer-update-v<version>`);
- a priced plan and no subscription: create one (`webhost-<id>-subscription-create-v<version>`),
  after a failed attempt first looking for one made by a request whose answer was lost;
- a different price or cancel flag: update the subscription item
  (`webhost-<id>-subscription-update-v<version>`, prorated);
- a free plan (no price): cancel the subscription (`webhost-<id>-subscription-cancel-<sub>`).
The stripe package retries each call (STRIPE_MAX_NETWORK_RETRIES: connection errors, 409, 5xx)
with the same key, so Stripe never makes two of anything for one push. Subscriptions are
invoiced (`collection_method=send_invoice`, due in INVOICE_DAYS_UNTIL_DUE days).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from storage import billing_accounts as store

if TYPE_CHECKING:
    import stripe

    from sync_server.domain.runtime import Runtime

log = structlog.get_logger("sync_server.domain.billing.stripe_sync")

LEASE_SECONDS = 120.0  # a pusher that died leaves its customer to another after this long
RETRY_BASE = 5.0  # first retry delay of a failed push (doubles, with jitter)
RETRY_MAX = 3600.0
INVOICE_DAYS_UNTIL_DUE = 30
BATCH = 100  # customers pushed or enforced per round
_SECRETS = re.compile(r"\b(sk|rk|whsec)_[A-Za-z0-9_]+")


async def changed(rt: Runtime, conn: asyncpg.Connection, customer_id) -> None:
    """In the caller's transaction: queue a push of the customer to Stripe (nothing without Stripe)."""
    if rt.billing_provider is not None:
        await store.mark_changed(conn, customer_id)


async def plan_repriced(rt: Runtime, conn: asyncpg.Connection, plan_id: str) -> None:
    """In the caller's (operator) transaction: a plan's stripe_price_id changed, so every customer on
    it is pushed again (then `wake_all` after the commit)."""
    if rt.billing_provider is not None:
        customers = await store.mark_plan_changed(conn, plan_id)
        log.info("stripe_plan_repriced", plan_id=plan_id, customers=customers)


def wake_all(rt: Runtime) -> None:
    """After a commit that queued pushes for many customers: run a sync round now."""
    if rt.billing_provider is not None:
        rt.billing_provider.wake()


async def subscription_of(rt: Runtime, conn: asyncpg.Connection, customer_id) -> str | None:
    """The customer's Stripe subscription (read before the customer is deleted)."""
    if rt.billing_provider is None:
        return None
    account = await store.get(conn, customer_id)
    return account["stripe_subscription_id"] if account is not None else None


def cancel_after_delete(rt: Runtime, customer_id, subscription: str | None) -> None:
    """A deleted customer's Stripe subscription is canceled at once (best effort: its account row is
    gone with the customer, so a failure is logged as an error for the operator to cancel it)."""
    if rt.billing_provider is not None and subscription is not None:
        rt.spawn(rt.billing_provider.cancel_deleted(customer_id, subscription), "stripe_cancel")


def wake(rt: Runtime, customer_id) -> None:
    """After the commit of a change: push it now, in a background job (the sync loop is the net)."""
    if rt.billing_provider is not None:
        rt.spawn(rt.billing_provider.push_now(customer_id), "stripe_push")


def redacted(text: str) -> str:
    """An error as stored and logged: no API key or signing secret, bounded."""
    return _SECRETS.sub(lambda m: m.group(1) + "_***", text)[:500]


def describe(exc: BaseException) -> str:
    """What a failed Stripe call says, without secrets or the request body."""
    import stripe

    if isinstance(exc, stripe.StripeError):
        status = getattr(exc, "http_status", None)
        code = getattr(exc, "code", None)
        return redacted(f"{type(exc).__name__} status={status} code={code}: {exc.user_message or ''}".strip())
    return redacted(f"{type(exc).__name__}: {exc}")


def _profile(name: str, email: str | None) -> str:
    """The digest of what the Stripe customer is told about ours (a change is pushed)."""
    return hashlib.sha256(f"{name}\n{email or ''}".encode()).hexdigest()


def _item_of(subscription: dict) -> tuple[str | None, str | None]:
    """(item id, price id) of a subscription's first item."""
    items = (subscription.get("items") or {}).get("data") or []
    if not items:
        return None, None
    price = items[0].get("price") or {}
    return items[0].get("id"), price.get("id") if isinstance(price, dict) else price


class StripeSync:
    """The node's Stripe pusher and policy timer (Runtime.billing_provider)."""

    def __init__(self, rt: Runtime) -> None:
        import stripe

        settings = rt.settings
        assert settings.stripe_secret_key, "StripeSync needs STRIPE_SECRET_KEY"
        self.rt = rt
        self.http = stripe.HTTPXClient(timeout=30)
        self.client: stripe.StripeClient = stripe.StripeClient(
            settings.stripe_secret_key,
            base_addresses={"api": settings.stripe_api_base.rstrip("/")},
            max_network_retries=settings.stripe_max_network_retries,
            http_client=self.http,
        )
        self.interval = settings.stripe_sync_interval
        self._wake = asyncio.Event()
        self.pushed = 0  # versions pushed to Stripe by this node (read by GET /metrics)
        self.push_failures = 0

    async def close(self) -> None:
        await self.http.close_async()

    def wake(self) -> None:
        """Run the next sync round now."""
        self._wake.set()

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Every interval: adopt customers made before Stripe was configured, push what is due,
        apply the policy's timers. Each round's failure is logged; the loop goes on."""
        adopted = False
        while not self.rt.shutting_down.is_set():
            try:
                if not adopted:
                    async with self.rt.db.operator("stripe_adopt_customers") as conn:
                        count = await store.adopt_missing(conn)
                    if count:
                        log.info("stripe_customers_adopted", customers=count)
                    adopted = True
                await self.round()
            except Exception:
                log.exception("stripe_sync_round_failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def round(self) -> None:
        """Push every due customer, then apply the policy to those whose state may call for it."""
        from sync_server.domain.billing import stripe_events

        async with self.rt.db.operator("stripe_push_due") as conn:
            due = await store.due(conn, BATCH)
        for customer_id in due:
            await self.push(customer_id)
        async with self.rt.db.operator("stripe_policy_timers") as conn:
            candidates = await store.to_enforce(conn, 10 * BATCH)
        for customer_id in candidates:
            await stripe_events.enforce(self.rt, customer_id)

    # --- one customer --------------------------------------------------------------------------

    async def push_now(self, customer_id) -> None:
        """`push` as a background job (its outcome is in the account and the log)."""
        await self.push(customer_id)

    async def push(self, customer_id) -> bool:
        """Push the customer's pending change(s); False when nothing was pending, another node holds
        it, or Stripe failed (then retried later)."""
        pushed = False
        while True:
            async with self.rt.db.operator("stripe_push", customer_id=str(customer_id)) as conn:
                job = await store.claim(conn, customer_id, LEASE_SECONDS)
            if job is None:
                return pushed
            try:
                outcome = await self._push(job)
            except Exception as exc:
                await self._failed(job, exc)
                return False
            async with self.rt.db.operator("stripe_pushed", customer_id=str(customer_id)) as conn:
                await store.pushed(conn, customer_id, job["wanted_version"], **outcome)
            self.pushed += 1
            log.info(
                "stripe_pushed",
                customer_id=str(customer_id),
                version=job["wanted_version"],
                plan_id=job["plan_id"],
                stripe_subscription=outcome["subscription_id"],
            )
            pushed = True

    async def _failed(self, job: asyncpg.Record, exc: BaseException) -> None:
        delay = min(RETRY_MAX, RETRY_BASE * 2 ** min(job["attempts"], 20)) * random.uniform(0.8, 1.2)
        error = describe(exc)
        self.push_failures += 1
        async with self.rt.db.operator("stripe_push_failed", customer_id=str(job["customer_id"])) as conn:
            attempts = await store.failed(conn, job["customer_id"], error, delay)
        log.warning(
            "stripe_push_failed",
            customer_id=str(job["customer_id"]),
            attempts=attempts,
            retry_in_seconds=round(delay, 1),
            error=error,
        )

    async def _push(self, job: asyncpg.Record) -> dict:
        customer_id = str(job["customer_id"])
        key = f"webhost-{customer_id}"
        metadata = {"webhost_customer_id": customer_id, "webhost_slug": job["slug"]}
        version = job["wanted_version"]
        profile = _profile(job["name"], job["email"])
        stripe_customer = job["stripe_customer_id"]
        found = False
        if stripe_customer is None and job["attempts"] > 0:
            stripe_customer = await self._find_customer(customer_id)
            found = stripe_customer is not None
        if stripe_customer is None:
            params: Any = {"name": job["name"], "metadata": metadata}
            if job["email"]:
                params["email"] = job["email"]
            created = await self.client.v1.customers.create_async(params, {"idempotency_key": f"{key}-customer-create"})
            stripe_customer = created.id
        elif found or job["pushed_profile"] != profile:  # its name or email changed since
            await self.client.v1.customers.update_async(
                stripe_customer,
                {"name": job["name"], "email": job["email"] or ""},
                {"idempotency_key": f"{key}-customer-update-v{version}"},
            )
        if stripe_customer != job["stripe_customer_id"] or profile != job["pushed_profile"]:
            async with self.rt.db.operator("stripe_customer_pushed", customer_id=customer_id) as conn:
                await store.set_stripe_customer(conn, job["customer_id"], stripe_customer, profile)
        price, cancel = job["wanted_price"], bool(job["wanted_cancel"])
        subscription, item = job["stripe_subscription_id"], job["stripe_item_id"]
        if price is None:  # a free plan: no Stripe subscription
            if subscription is not None:
                await self._cancel(subscription, f"{key}-subscription-cancel-{subscription}")
            return {"subscription_id": None, "item_id": None, "price_id": None, "cancel_at_period_end": False}
        if subscription is None and job["attempts"] > 0:
            subscription, item, current_price = await self._find_subscription(stripe_customer, customer_id)
            if subscription is not None and current_price == price and not cancel:
                return {
                    "subscription_id": subscription,
                    "item_id": item,
                    "price_id": price,
                    "cancel_at_period_end": False,
                }
        if subscription is None:
            created_sub = await self.client.v1.subscriptions.create_async(
                {
                    "customer": stripe_customer,
                    "items": [{"price": price}],
                    "cancel_at_period_end": cancel,
                    "collection_method": "send_invoice",
                    "days_until_due": INVOICE_DAYS_UNTIL_DUE,
                    "metadata": metadata,
                },
                {"idempotency_key": f"{key}-subscription-create-v{version}"},
            )
            item, _price = _item_of(created_sub.to_dict())
            return {
                "subscription_id": created_sub.id,
                "item_id": item,
                "price_id": price,
                "cancel_at_period_end": cancel,
            }
        if item is None or job["stripe_price_id"] != price or job["cancel_at_period_end"] != cancel:
            if item is None:
                item, _price = _item_of((await self.client.v1.subscriptions.retrieve_async(subscription)).to_dict())
            changes: Any = {
                "cancel_at_period_end": cancel,
                "proration_behavior": "create_prorations",
                "metadata": metadata,
            }
            if item is not None:
                changes["items"] = [{"id": item, "price": price}]
            updated = await self.client.v1.subscriptions.update_async(
                subscription, changes, {"idempotency_key": f"{key}-subscription-update-v{version}"}
            )
            item, _price = _item_of(updated.to_dict())
        return {"subscription_id": subscription, "item_id": item, "price_id": price, "cancel_at_period_end": cancel}

    async def cancel_deleted(self, customer_id, subscription: str) -> None:
        try:
            await self._cancel(subscription, f"webhost-{customer_id}-subscription-cancel-{subscription}")
            log.info("stripe_subscription_canceled", customer_id=str(customer_id), stripe_subscription=subscription)
        except Exception as exc:
            log.error(
                "stripe_cancel_failed",
                customer_id=str(customer_id),
                stripe_subscription=subscription,
                error=describe(exc),
                action="cancel it in the Stripe dashboard",
            )

    async def _cancel(self, subscription: str, idempotency_key: str) -> None:
        import stripe

        try:
            await self.client.v1.subscriptions.cancel_async(
                subscription, {"prorate": True}, {"idempotency_key": idempotency_key}
            )
        except stripe.InvalidRequestError as exc:
            if exc.http_status != 404:  # already gone at Stripe: what we wanted
                raise

    async def _find_customer(self, customer_id: str) -> str | None:
        """Our Stripe customer made by an earlier attempt whose answer was lost (its metadata names us)."""
        found = await self.client.v1.customers.search_async(
            {"query": f"metadata['webhost_customer_id']:'{customer_id}'", "limit": 1}
        )
        return found.data[0].id if found.data else None

    async def _find_subscription(
        self, stripe_customer: str, customer_id: str
    ) -> tuple[str | None, str | None, str | None]:
        """A live subscription of ours at Stripe that an earlier attempt made but never heard back
        about (its answer lost past the idempotency replay): adopted instead of a second one."""
        from sync_server.domain.billing.policy import ENDED

        found = await self.client.v1.subscriptions.list_async({"customer": stripe_customer, "limit": 20})
        for found_sub in found.data:
            sub = found_sub.to_dict()
            if (sub.get("metadata") or {}).get("webhost_customer_id") == customer_id and sub.get("status") not in ENDED:
                item, price = _item_of(sub)
                return sub["id"], item, price
        return None, None, None


def install(rt: Runtime) -> StripeSync | None:
    """The node's Stripe pusher with STRIPE_SECRET_KEY (None without: billing stays internal)."""
    if not rt.settings.stripe_secret_key:
        return None
    sync = StripeSync(rt)

    async def start() -> None:
        rt.spawn(sync.run(), "stripe_sync")

    async def drain() -> None:
        sync.wake()

    rt.on_start(start)
    rt.on_drain(drain)
    rt.on_stop(sync.close)
    return sync
