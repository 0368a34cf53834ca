"""webhook_endpoints, webhook_outbox and webhook_attempts rows (tenant connections, migration 0100).

The signing secret is written only by `insert_endpoint` and read back only by
`secrets_of`; both go through `_seal` / `_unseal`: AES-GCM under ENCRYPTION_KEY (storage/sealing.py),
bound to the endpoint's customer; migration 0121 refuses a plaintext one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import asyncpg

from . import sealed_columns, sealing
from .database import TENANT_ROWS

_ENDPOINT = (
    "id, url, events, description, enabled, disabled_reason, disabled_at, failing_since, failures, "
    "created_at, updated_at"
)
_DELIVERY = (
    "id, endpoint_id, message_id, event_type, occurred_at, ordering_key, status, attempts, next_attempt_at, "
    "last_status, last_error, created_at, finished_at"
)
# An endpoint takes a type when it lists it, "*", a prefix pattern "geofence.*", or (for
# "<type>.retracted") the type retracted.
_MATCHES = (
    "(m.type = ANY(e.events) OR '*' = ANY(e.events) "
    "OR (m.type LIKE '%.retracted' AND left(m.type, -10) = ANY(e.events)) "
    "OR EXISTS (SELECT 1 FROM unnest(e.events) p WHERE p LIKE '%.*' AND starts_with(m.type, left(p, -1))))"
)


_SECRET = sealed_columns.column("webhook_endpoints", "secret")


def _seal(customer_id, secret: str) -> str:
    """The stored form of a signing secret: sealed under ENCRYPTION_KEY for its customer (storage/sealing.py)."""
    return sealing.seal(secret, _SECRET.purpose_for(customer_id))


def _unseal(customer_id, stored: str) -> str:
    return sealing.open(stored, _SECRET.purpose_for(customer_id))


# --- endpoints ----------------------------------------------------------------------------------


async def insert_endpoint(
    conn: asyncpg.Connection, customer_id, *, url: str, events: Sequence[str], description: str, secret: str
) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO webhook_endpoints (customer_id, url, events, description, secret) "
        f"VALUES ($1, $2, $3, $4, $5) RETURNING {_ENDPOINT}",
        customer_id,
        url,
        list(events),
        description,
        _seal(customer_id, secret),
    )


async def secrets_of(conn: asyncpg.Connection, endpoint_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The signing secrets of these endpoints (the one read of the column)."""
    rows = await conn.fetch(
        "SELECT id, customer_id, secret FROM webhook_endpoints WHERE id = ANY($1::uuid[])", list(set(endpoint_ids))
    )
    return {r["id"]: _unseal(r["customer_id"], r["secret"]) for r in rows}


async def list_endpoints(conn: asyncpg.Connection, *, after: tuple, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE {TENANT_ROWS} "
        "AND ($1::timestamptz IS NULL OR (created_at, id) > ($1, $2::uuid)) ORDER BY created_at, id LIMIT $3",
        after[0],
        after[1],
        limit + 1,
    )


async def count_endpoints(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(f"SELECT count(*) FROM webhook_endpoints WHERE {TENANT_ROWS}")


async def get_endpoint(conn: asyncpg.Connection, endpoint_id, *, for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE id = $1{lock}", endpoint_id)


async def update_endpoint(
    conn: asyncpg.Connection, endpoint_id, *, url: str, events: Sequence[str], description: str, enabled: bool
) -> asyncpg.Record | None:
    """Enabling an endpoint clears why it was disabled and its run of failures."""
    return await conn.fetchrow(
        "UPDATE webhook_endpoints SET url = $2, events = $3, description = $4, enabled = $5, updated_at = now(), "
        "disabled_reason = CASE WHEN $5 THEN NULL ELSE coalesce(disabled_reason, 'disabled by its owner') END, "
        "disabled_at = CASE WHEN $5 THEN NULL ELSE coalesce(disabled_at, now()) END, "
        "failing_since = CASE WHEN $5 AND NOT enabled THEN NULL ELSE failing_since END, "
        "failures = CASE WHEN $5 AND NOT enabled THEN 0 ELSE failures END "
        f"WHERE id = $1 RETURNING {_ENDPOINT}",
        endpoint_id,
        url,
        list(events),
        description,
        enabled,
    )


async def delete_endpoint(conn: asyncpg.Connection, endpoint_id) -> bool:
    return await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id) == "DELETE 1"


# --- the outbox ---------------------------------------------------------------------------------


async def enqueue(
    conn: asyncpg.Connection,
    customer_id,
    *,
    message_ids: Sequence[uuid.UUID],
    types: Sequence[str],
    bodies: Sequence[str],
    occurred: Sequence[dt.datetime],
    ordering_keys: Sequence[str | None],
    dedupe_keys: Sequence[str | None],
    retracts: Sequence[str | None] | None = None,
    endpoint_id: uuid.UUID | None = None,
) -> int:
    """One row per (message, enabled endpoint whose events take its type), in message order;
    a (endpoint, dedupe key) already in the outbox is skipped. A message that `retracts` a dedupe
    key goes to the endpoints holding that key instead. With `endpoint_id`: that endpoint only,
    whatever its events (test sends). Returns the rows written."""
    status = await conn.execute(
        "INSERT INTO webhook_outbox (customer_id, endpoint_id, message_id, event_type, body, occurred_at, "
        "ordering_key, dedupe_key) "
        "SELECT $1, e.id, m.message_id, m.type, m.body, m.occurred_at, m.ordering_key, m.dedupe_key "
        "FROM unnest($2::uuid[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], $9::text[]) "
        "WITH ORDINALITY AS m(message_id, type, body, occurred_at, ordering_key, dedupe_key, retracts, n) "
        "JOIN webhook_endpoints e ON e.customer_id = $1 AND e.enabled "
        "AND CASE WHEN $8::uuid IS NOT NULL THEN e.id = $8 "
        "WHEN m.retracts IS NOT NULL THEN EXISTS (SELECT 1 FROM webhook_outbox x WHERE x.customer_id = $1 "
        "AND x.endpoint_id = e.id AND x.dedupe_key = m.retracts) "
        f"ELSE {_MATCHES} END "
        "ORDER BY m.n, e.id "
        "ON CONFLICT (customer_id, endpoint_id, dedupe_key) DO NOTHING",
        customer_id,
        list(message_ids),
        list(types),
        list(bodies),
        list(occurred),
        list(ordering_keys),
        list(dedupe_keys),
        endpoint_id,
        list(retracts) if retracts is not None else [None] * len(message_ids),
    )
    return int(status.rsplit(" ", 1)[-1])


async def subscribed(conn: asyncpg.Connection, customer_id, event_type: str) -> bool:
    """Whether any enabled endpoint of the customer takes `event_type`."""
    return await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM webhook_endpoints e, (SELECT $2::text AS type) m "
        f"WHERE e.customer_id = $1 AND e.enabled AND {_MATCHES})",
        customer_id,
        event_type,
    )


async def due_customers(conn: asyncpg.Connection, limit: int) -> list[uuid.UUID]:
    """Customers of this database with deliveries due now (the one cross-tenant look-up, ids only)."""
    return [r["customer_id"] for r in await conn.fetch("SELECT customer_id FROM webhost_webhook_due($1)", limit)]


async def claim(conn: asyncpg.Connection, customer_id, *, limit: int, lease_seconds: float) -> list[asyncpg.Record]:
    """Claim up to `limit` due deliveries of enabled endpoints for `lease_seconds`: each the head of
    its (endpoint, ordering key) queue (no earlier row of it is pending, claimed or waiting for
    its retry), locked SKIP LOCKED so concurrent claimers never take the same row. Each claim bumps
    `attempts`: the token `finish` checks, so a claim that outlived its lease records nothing."""
    return await conn.fetch(
        "WITH due AS ("
        "  SELECT o.id FROM webhook_outbox o JOIN webhook_endpoints e ON e.id = o.endpoint_id AND e.enabled "
        "  WHERE o.customer_id = $1 AND o.status = 'pending' AND o.next_attempt_at <= clock_timestamp() "
        "  AND (o.lease_until IS NULL OR o.lease_until <= clock_timestamp()) "
        "  AND (o.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM webhook_outbox p "
        "       WHERE p.customer_id = o.customer_id AND p.endpoint_id = o.endpoint_id "
        "       AND p.ordering_key = o.ordering_key AND p.status = 'pending' AND p.seq < o.seq)) "
        "  ORDER BY o.seq LIMIT $2 FOR UPDATE OF o SKIP LOCKED) "
        "UPDATE webhook_outbox o SET attempts = o.attempts + 1, "
        "lease_until = clock_timestamp() + make_interval(secs => $3) "
        "FROM due, webhook_endpoints e WHERE o.id = due.id AND e.id = o.endpoint_id "
        "RETURNING o.id, o.endpoint_id, o.message_id, o.event_type, o.body, o.attempts, o.created_at, e.url",
        customer_id,
        limit,
        lease_seconds,
    )


async def finish(
    conn: asyncpg.Connection,
    customer_id,
    delivery_id,
    attempt: int,
    *,
    status: str,
    next_attempt_at: dt.datetime | None,
    status_code: int | None,
    error: str | None,
    response: str | None,
    duration_ms: int,
) -> bool:
    """Record an attempt's outcome, only while `attempt` is still the row's current claim: status
    'delivered', 'dead', or 'pending' again from `next_attempt_at`; the attempt goes to the log and
    a delivery ends its endpoint's run of failures. One statement. False if the claim was lost."""
    recorded = await conn.fetchval(
        "WITH done AS (UPDATE webhook_outbox SET status = $4, lease_until = NULL, last_status = $6, last_error = $7, "
        "  next_attempt_at = coalesce($5, next_attempt_at), "
        "  finished_at = CASE WHEN $4 = 'pending' THEN NULL ELSE clock_timestamp() END "
        "  WHERE id = $2 AND customer_id = $1 AND attempts = $3 AND status = 'pending' RETURNING id, endpoint_id), "
        "logged AS (INSERT INTO webhook_attempts "
        "  (customer_id, delivery_id, attempt, status_code, error, response, duration_ms) "
        "  SELECT $1, id, $3, $6, $7, $8, $9 FROM done), "
        "healthy AS (UPDATE webhook_endpoints SET failing_since = NULL, failures = 0 "
        "  WHERE $4 = 'delivered' AND failures > 0 AND id IN (SELECT endpoint_id FROM done)) "
        "SELECT count(*) FROM done",
        customer_id,
        delivery_id,
        attempt,
        status,
        next_attempt_at,
        status_code,
        error,
        response,
        duration_ms,
    )
    return recorded == 1


async def endpoint_failed(
    conn: asyncpg.Connection, endpoint_id, *, disable_after_seconds: float, min_failures: int, reason: str
) -> asyncpg.Record | None:
    """Count a failed attempt; an endpoint failing for `disable_after_seconds` and at least
    `min_failures` attempts is disabled with `reason`. Returns the row if this call disabled it."""
    return await conn.fetchrow(
        "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, clock_timestamp()), "
        "failures = failures + 1, "
        "enabled = NOT (failures + 1 >= $3 AND clock_timestamp() - coalesce(failing_since, clock_timestamp()) "
        "               >= make_interval(secs => $2)), "
        "disabled_at = CASE WHEN failures + 1 >= $3 AND clock_timestamp() - coalesce(failing_since, clock_timestamp()) "
        "              >= make_interval(secs => $2) THEN clock_timestamp() END, "
        "disabled_reason = CASE WHEN failures + 1 >= $3 AND clock_timestamp() - coalesce(failing_since, "
        "                  clock_timestamp()) >= make_interval(secs => $2) "
        "                  THEN $4 || ' (failing since ' || to_char(failing_since AT TIME ZONE 'UTC', "
        "                  'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') || ', ' || (failures + 1) || ' failed attempts)' END "
        "WHERE id = $1 AND enabled RETURNING id, enabled, disabled_reason",
        endpoint_id,
        disable_after_seconds,
        min_failures,
        reason,
    )


async def deliveries(
    conn: asyncpg.Connection, endpoint_id, *, status: str | None, before: tuple, limit: int
) -> list[asyncpg.Record]:
    """An endpoint's deliveries, newest first (cursor: the last row's (created_at, id))."""
    return await conn.fetch(
        f"SELECT {_DELIVERY} FROM webhook_outbox WHERE {TENANT_ROWS} AND endpoint_id = $1 "
        "AND ($2::text IS NULL OR status = $2) "
        "AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid)) "
        "ORDER BY created_at DESC, id DESC LIMIT $5",
        endpoint_id,
        status,
        before[0],
        before[1],
        limit + 1,
    )


async def delivery(conn: asyncpg.Connection, endpoint_id, delivery_id) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_DELIVERY}, body FROM webhook_outbox WHERE id = $2 AND endpoint_id = $1", endpoint_id, delivery_id
    )


async def enqueued_here(conn: asyncpg.Connection, endpoint_id) -> asyncpg.Record | None:
    """The endpoint's delivery enqueued last by this transaction (created_at is its start time)."""
    return await conn.fetchrow(
        f"SELECT {_DELIVERY} FROM webhook_outbox WHERE endpoint_id = $1 AND created_at = now() "
        "ORDER BY seq DESC LIMIT 1",
        endpoint_id,
    )


async def attempts_of(conn: asyncpg.Connection, delivery_ids: Sequence[uuid.UUID]) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT delivery_id, attempt, attempted_at, status_code, error, response, duration_ms FROM webhook_attempts "
        "WHERE delivery_id = ANY($1::uuid[]) ORDER BY attempted_at, attempt",
        list(delivery_ids),
    )


async def redeliver(conn: asyncpg.Connection, customer_id, endpoint_id, delivery_id) -> asyncpg.Record | None:
    """A new pending delivery of the same message (same webhook-id and body) to the same endpoint,
    outside any ordering (a manual resend); None if there is no such delivery."""
    return await conn.fetchrow(
        "INSERT INTO webhook_outbox (customer_id, endpoint_id, message_id, event_type, body, occurred_at) "
        "SELECT customer_id, endpoint_id, message_id, event_type, body, occurred_at FROM webhook_outbox "
        f"WHERE customer_id = $1 AND endpoint_id = $2 AND id = $3 RETURNING {_DELIVERY}",
        customer_id,
        endpoint_id,
        delivery_id,
    )


async def delete_finished_before(conn: asyncpg.Connection, customer_id, cutoff: dt.datetime, limit: int) -> int:
    """Retention: up to `limit` of the customer's delivered or dead deliveries that finished before
    `cutoff` (their attempts go with them); pending ones stay whatever their age."""
    status = await conn.execute(
        "DELETE FROM webhook_outbox o USING (SELECT id FROM webhook_outbox WHERE customer_id = $1 "
        "AND status <> 'pending' AND finished_at < $2 ORDER BY finished_at LIMIT $3) old "
        "WHERE o.customer_id = $1 AND o.id = old.id",
        customer_id,
        cutoff,
        limit,
    )
    return int(status.rsplit(" ", 1)[-1])
