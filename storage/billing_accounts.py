"""billing_accounts and stripe_events rows (control plane, shared database, migration 0140).

billing_accounts is both the outbox of changes to push to Stripe (wanted_version > pushed_version)
and the subscription state Stripe's webhooks reported; stripe_events records each webhook event
once. Cross-tenant paths (the push worker, the webhook) pass a Database.operator() connection.
No credential is stored here: the Stripe ids are references, not secrets.
"""

from __future__ import annotations

import asyncpg

_ACCOUNT = (
    "customer_id, stripe_customer_id, pushed_profile, stripe_subscription_id, stripe_item_id, stripe_price_id, cancel_at_period_end, "
    "wanted_version, pushed_version, attempts, next_attempt_at, lease_until, last_error, pushed_at, "
    "subscription_status, status_at, current_period_end, past_due_since, invoice_status, invoice_at, suspended_for, "
    "created_at, updated_at"
)


async def mark_changed(conn: asyncpg.Connection, customer_id) -> None:
    """Something Stripe must hear about changed (a new customer, a plan change): one more version
    to push, due now. In the transaction of the change, so the change and its push commit together."""
    await conn.execute(
        "INSERT INTO billing_accounts (customer_id) VALUES ($1) ON CONFLICT (customer_id) DO UPDATE SET "
        "wanted_version = billing_accounts.wanted_version + 1, attempts = 0, next_attempt_at = now(), "
        "updated_at = now()",
        customer_id,
    )


async def mark_plan_changed(conn: asyncpg.Connection, plan_id: str) -> int:
    """mark_changed for every customer whose active subscription is on `plan_id` (its price changed)."""
    status = await conn.execute(
        "INSERT INTO billing_accounts (customer_id) SELECT s.customer_id FROM subscriptions s "
        "WHERE s.plan_id = $1 AND s.status = 'active' ON CONFLICT (customer_id) DO UPDATE SET "
        "wanted_version = billing_accounts.wanted_version + 1, attempts = 0, next_attempt_at = now(), "
        "updated_at = now()",
        plan_id,
    )
    return int(status.rsplit(" ", 1)[-1])


async def adopt_missing(conn: asyncpg.Connection) -> int:
    """A row (to push) for every customer without one: customers made before STRIPE_SECRET_KEY was set."""
    status = await conn.execute(
        "INSERT INTO billing_accounts (customer_id) SELECT c.id FROM customers c "
        "WHERE NOT EXISTS (SELECT 1 FROM billing_accounts b WHERE b.customer_id = c.id) ON CONFLICT DO NOTHING"
    )
    return int(status.rsplit(" ", 1)[-1])


async def due(conn: asyncpg.Connection, limit: int) -> list:
    """Customer ids with a push due and no live lease, oldest first."""
    rows = await conn.fetch(
        "SELECT customer_id FROM billing_accounts WHERE pushed_version < wanted_version AND next_attempt_at <= now() "
        "AND (lease_until IS NULL OR lease_until < now()) ORDER BY next_attempt_at LIMIT $1",
        limit,
    )
    return [r["customer_id"] for r in rows]


async def outbox_stats(conn: asyncpg.Connection) -> dict[str, float]:
    """Over all customers (an operator transaction): how many have a change Stripe does not have,
    and how many of those failed their last push."""
    row = await conn.fetchrow(
        "SELECT count(*) AS pending, count(*) FILTER (WHERE attempts > 0) AS failing "
        "FROM billing_accounts WHERE pushed_version < wanted_version"
    )
    return {"pending": row["pending"], "failing": row["failing"]}


async def claim(conn: asyncpg.Connection, customer_id, lease_seconds: float) -> asyncpg.Record | None:
    """Lease the customer's pending push (None when nothing is pending or another worker holds it),
    with what is to be pushed: the customer, its active plan and that plan's Stripe price."""
    leased = await conn.fetchval(
        "UPDATE billing_accounts SET lease_until = now() + make_interval(secs => $2) WHERE customer_id = $1 "
        "AND pushed_version < wanted_version AND (lease_until IS NULL OR lease_until < now()) RETURNING customer_id",
        customer_id,
        lease_seconds,
    )
    if leased is None:
        return None
    return await conn.fetchrow(
        f"SELECT {', '.join('b.' + c.strip() for c in _ACCOUNT.split(','))}, c.slug, c.name, c.email, "
        "s.plan_id, s.cancel_at_period_end AS wanted_cancel, p.stripe_price_id AS wanted_price "
        "FROM billing_accounts b JOIN customers c ON c.id = b.customer_id "
        "LEFT JOIN subscriptions s ON s.customer_id = c.id AND s.status = 'active' "
        "LEFT JOIN plans p ON p.id = s.plan_id WHERE b.customer_id = $1",
        customer_id,
    )


async def set_stripe_customer(conn: asyncpg.Connection, customer_id, stripe_customer_id: str, profile: str) -> None:
    """The Stripe customer, and the digest of the name and email it was given."""
    await conn.execute(
        "UPDATE billing_accounts SET stripe_customer_id = $2, pushed_profile = $3, updated_at = now() "
        "WHERE customer_id = $1",
        customer_id,
        stripe_customer_id,
        profile,
    )


async def pushed(
    conn: asyncpg.Connection,
    customer_id,
    version: int,
    *,
    subscription_id: str | None,
    item_id: str | None,
    price_id: str | None,
    cancel_at_period_end: bool,
) -> None:
    """Stripe now holds `version`: the ids it answered recorded, the lease and the error cleared.
    A subscription ended here (a move to a free plan) forgets the state Stripe reported for it."""
    await conn.execute(
        "UPDATE billing_accounts SET pushed_version = greatest(pushed_version, $2), stripe_subscription_id = $3, "
        "stripe_item_id = $4, stripe_price_id = $5, cancel_at_period_end = $6, attempts = 0, last_error = NULL, "
        "lease_until = NULL, pushed_at = now(), updated_at = now(), "
        "subscription_status = CASE WHEN $3::text IS DISTINCT FROM stripe_subscription_id THEN NULL "
        "ELSE subscription_status END, "
        "past_due_since = CASE WHEN $3::text IS NULL THEN NULL ELSE past_due_since END "
        "WHERE customer_id = $1",
        customer_id,
        version,
        subscription_id,
        item_id,
        price_id,
        cancel_at_period_end,
    )


async def failed(conn: asyncpg.Connection, customer_id, error: str, retry_in: float) -> int:
    """The push failed: lease released, retried after `retry_in` seconds; returns the attempts so far."""
    return await conn.fetchval(
        "UPDATE billing_accounts SET attempts = attempts + 1, last_error = left($2, 500), lease_until = NULL, "
        "next_attempt_at = now() + make_interval(secs => $3), updated_at = now() WHERE customer_id = $1 "
        "RETURNING attempts",
        customer_id,
        error,
        retry_in,
    )


async def get(conn: asyncpg.Connection, customer_id, *, for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT {_ACCOUNT} FROM billing_accounts WHERE customer_id = $1{lock}", customer_id)


async def by_stripe_customer(conn: asyncpg.Connection, stripe_customer_id: str) -> asyncpg.Record | None:
    """The account of a Stripe customer, locked for the event being applied."""
    return await conn.fetchrow(
        f"SELECT {_ACCOUNT} FROM billing_accounts WHERE stripe_customer_id = $1 FOR UPDATE", stripe_customer_id
    )


async def apply_state(conn: asyncpg.Connection, customer_id, state: dict) -> None:
    """Write the reported-state columns of `state` (the keys are fixed by the caller, never input)."""
    allowed = (
        "stripe_subscription_id",
        "stripe_item_id",
        "stripe_price_id",
        "subscription_status",
        "status_at",
        "current_period_end",
        "past_due_since",
        "invoice_status",
        "invoice_at",
        "wanted_version",
        "next_attempt_at",
    )
    keys = [k for k in allowed if k in state]
    if not keys:
        return
    sets = ", ".join(f"{k} = ${i + 2}" for i, k in enumerate(keys))
    await conn.execute(
        f"UPDATE billing_accounts SET {sets}, updated_at = now() WHERE customer_id = $1",
        customer_id,
        *(state[k] for k in keys),
    )


async def set_suspended_for(conn: asyncpg.Connection, customer_id, state_key: str | None) -> None:
    await conn.execute(
        "UPDATE billing_accounts SET suspended_for = $2, updated_at = now() WHERE customer_id = $1",
        customer_id,
        state_key,
    )


async def to_enforce(conn: asyncpg.Connection, limit: int) -> list:
    """Customers whose billing state may call for a suspension or a reactivation (policy timers)."""
    rows = await conn.fetch(
        "SELECT b.customer_id FROM billing_accounts b JOIN customers c ON c.id = b.customer_id "
        "WHERE b.past_due_since IS NOT NULL OR b.subscription_status IN ('canceled', 'unpaid', 'incomplete_expired') "
        "OR c.suspended_by = 'billing' ORDER BY b.customer_id LIMIT $1",
        limit,
    )
    return [r["customer_id"] for r in rows]


async def record_event(
    conn: asyncpg.Connection, event_id: str, event_type: str, created: int, object_id: str | None
) -> bool:
    """Record a webhook event; False when it was recorded before (a replay: nothing to do). A
    concurrent delivery of the same id waits here for the first one's transaction."""
    return (
        await conn.fetchval(
            "INSERT INTO stripe_events (id, type, created, object_id, outcome) VALUES ($1, $2, $3, $4, 'ignored') "
            "ON CONFLICT (id) DO NOTHING RETURNING true",
            event_id,
            event_type,
            created,
            object_id,
        )
        is not None
    )


async def set_event_outcome(conn: asyncpg.Connection, event_id: str, customer_id, outcome: str) -> None:
    await conn.execute(
        "UPDATE stripe_events SET customer_id = $2, outcome = $3 WHERE id = $1", event_id, customer_id, outcome
    )


async def events_of(conn: asyncpg.Connection, customer_id, limit: int = 20) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, type, created, object_id, outcome, received_at FROM stripe_events WHERE customer_id = $1 "
        "ORDER BY received_at DESC, id LIMIT $2",
        customer_id,
        limit,
    )
