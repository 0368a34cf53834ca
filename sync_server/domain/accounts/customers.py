"""Customer lifecycle: create (with its subscription and first API key, in one transaction),
suspend/reactivate (suspension tells the sync side to close the customer's websockets), delete.
Every cross-tenant step goes through Database.operator(reason), which is audited.

Suspension has one path, whoever decides it: an operator (`set_status`) or the billing policy
(`billing_hold`, sync_server/domain/billing/policy.py); both end in `announce_status`, which tells
every node ("customer_suspended") to close the customer's sockets. `customers.suspended_by` says
who: billing reactivates only a customer billing suspended."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from storage import api_keys as key_store
from storage import customers as customer_store
from storage import plans as plan_store
from storage import subscriptions as subscription_store
from sync_server.domain.accounts import api_keys
from sync_server.domain.billing import stripe_sync
from sync_server.domain.billing.plans import UnknownPlan
from sync_server.domain.runtime import Runtime

FIRST_KEY_PERMISSIONS = ["admin"]


@dataclass(frozen=True)
class NewCustomer:
    customer: asyncpg.Record
    api_key: asyncpg.Record
    raw_key: str
    subscription: asyncpg.Record


async def create(
    rt: Runtime, *, slug: str, name: str, email: str | None, metadata: dict, plan_id: str, operator_id: str
) -> NewCustomer:
    """Raises UnknownPlan, or asyncpg.UniqueViolationError when the slug or email is taken."""
    raw = api_keys.generate("live")
    async with rt.db.operator("create_customer", slug=slug, operator_id=operator_id) as conn:
        if await plan_store.get(conn, plan_id) is None:
            raise UnknownPlan(plan_id)
        row = await customer_store.insert(conn, slug=slug, name=name, email=email, metadata=metadata)
        subscription = await subscription_store.insert(conn, row["id"], plan_id)
        key = await key_store.insert(
            conn,
            customer_id=row["id"],
            name="first key",
            prefix=api_keys.display_prefix(raw),
            key_hash=api_keys.digest(raw),
            environment="live",
            permissions=FIRST_KEY_PERMISSIONS,
            expires_at=None,
        )
        customer = await customer_store.get(conn, row["id"])
        await stripe_sync.changed(rt, conn, row["id"])  # with Stripe: the customer and subscription to create
    stripe_sync.wake(rt, row["id"])
    return NewCustomer(customer, key, raw, subscription)


async def set_status(rt: Runtime, customer_id, status: str, *, operator_id: str) -> asyncpg.Record | None:
    """Suspend or reactivate; None when there is no such customer."""
    async with rt.db.operator(f"customer_{status}", customer_id=str(customer_id), operator_id=operator_id) as conn:
        if not await customer_store.set_status(conn, customer_id, status, by="operator"):
            return None
        row = await customer_store.get(conn, customer_id)
    await announce_status(rt, customer_id, status)
    return row


async def billing_hold(conn: asyncpg.Connection, customer_id, *, suspend: bool) -> bool:
    """In the caller's (operator) transaction: suspend an active customer for billing, or reactivate
    one billing suspended (never one an operator suspended). True when the status changed: the
    caller then calls `announce_status` after its commit."""
    return await customer_store.set_status(conn, customer_id, "suspended" if suspend else "active", by="billing")


async def announce_status(rt: Runtime, customer_id, status: str) -> None:
    """After the commit of a status change: a suspension closes the customer's sockets everywhere."""
    if status == "suspended":
        await rt.publish("customer_suspended", customer_id=str(customer_id))


async def delete(rt: Runtime, customer_id, *, operator_id: str) -> bool:
    """Delete the customer and, by cascade, everything it owns in the shared database."""
    async with rt.db.operator("delete_customer", customer_id=str(customer_id), operator_id=operator_id) as conn:
        billed = await stripe_sync.subscription_of(rt, conn, customer_id)
        deleted = await customer_store.delete(conn, customer_id)
    if deleted:
        await rt.publish("customer_suspended", customer_id=str(customer_id))
        stripe_sync.cancel_after_delete(rt, customer_id, billed)
    return deleted
