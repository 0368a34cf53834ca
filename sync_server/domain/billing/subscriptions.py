"""Subscription rules: one active per customer; an upgrade applies at once; a downgrade applies at
once too, but only while current usage fits the new plan (otherwise refused with what exceeds it);
cancel means cancel at the end of the current period. Control plane: the shared database.
With Stripe (STRIPE_SECRET_KEY), each change also queues its push to Stripe in the same
transaction (stripe_sync.changed): the change never waits for, nor is lost to, a Stripe outage."""

from __future__ import annotations

import asyncpg

from storage import customers as customer_store
from storage import plans as plan_store
from storage import subscriptions as subscription_store
from sync_server.domain.billing import plans, stripe_sync
from sync_server.domain.billing.plans import UnknownPlan
from sync_server.domain.runtime import Runtime


class NoActiveSubscription(LookupError):
    pass


class DowngradeRefused(Exception):
    def __init__(self, violations: list[dict]) -> None:
        super().__init__("usage exceeds the new plan")
        self.violations = violations


async def active(rt: Runtime, customer_id) -> asyncpg.Record | None:
    async with rt.db.tenant(customer_id) as conn:
        return await subscription_store.active(conn, customer_id)


async def change_plan(rt: Runtime, customer_id, plan_id: str) -> asyncpg.Record:
    async with rt.db.tenant(customer_id) as conn:
        await customer_store.lock(conn, customer_id)  # one plan change at a time per customer
        current = await subscription_store.active(conn, customer_id, for_update=True)
        if current is None:
            raise NoActiveSubscription(customer_id)
        target = await plan_store.get(conn, plan_id)
        if target is None:
            raise UnknownPlan(plan_id)
        if current["plan_id"] == plan_id:
            return current
        violations = plans.exceeded(plans.Limits.from_plan(target), await plans.usage(rt.registry, customer_id))
        if violations:
            raise DowngradeRefused(violations)
        changed = await subscription_store.replace(conn, current["id"], customer_id, plan_id)
        await stripe_sync.changed(rt, conn, customer_id)  # with Stripe: the subscription's price to update
    stripe_sync.wake(rt, customer_id)
    # after commit: provisioning re-evaluates its recommendation for the customer (and records it)
    await rt.publish("plan_changed", customer_id=str(customer_id), plan_id=plan_id)
    return changed


async def cancel_at_period_end(rt: Runtime, customer_id) -> asyncpg.Record | None:
    async with rt.db.tenant(customer_id) as conn:
        current = await subscription_store.active(conn, customer_id, for_update=True)
        if current is None:
            return None
        row = await subscription_store.set_cancel_at_period_end(conn, current["id"], True)
        await stripe_sync.changed(rt, conn, customer_id)
    stripe_sync.wake(rt, customer_id)
    return row
