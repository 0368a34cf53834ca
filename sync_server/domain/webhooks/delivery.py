"""The delivery worker: every node runs one; together they send each outbox row at least once.

    loop: which customers have rows due (webhost_webhook_due: ids only)
          -> claim in the customer's tenant transaction (storage.webhooks.claim: FOR UPDATE SKIP
             LOCKED, the head of each (endpoint, ordering key) queue, a lease)
          -> POST each, signed (Standard Webhooks), outside any transaction, bounded in time and size
          -> record the outcome (only while the claim is still ours) and the attempt

At least once: a row leaves `pending` only when a receiver answered 2xx (delivered) or its retry
window is over (dead, still listed in the delivery log and redeliverable). A node killed mid-POST
leaves its rows leased: when the lease runs out another node sends them again (the receiver may
see a webhook-id twice, as the spec allows). Never two nodes at once: a claim locks the row and
sets a lease longer than a delivery may take, and a later claim needs the lease to be over.

Retries: exponential backoff (WEBHOOK_RETRY_BASE_SECONDS doubling, at most
WEBHOOK_RETRY_MAX_DELAY_SECONDS) with jitter (each delay drawn from its upper half), a receiver's
Retry-After honoured within that bound, until WEBHOOK_RETRY_WINDOW_SECONDS after the row was
enqueued; then dead-lettered. An endpoint whose every attempt failed for WEBHOOK_DISABLE_AFTER_SECONDS
(and at least WEBHOOK_DISABLE_AFTER_FAILURES attempts) is disabled with a reason its owner reads on
GET /api/v1/webhooks/{id}; PATCH {"enabled": true} resumes it with its pending deliveries.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import httpx
import structlog
from standardwebhooks.webhooks import Webhook

from storage import webhooks as store
from storage.database import Database
from storage.registry import DatabaseRegistry
from sync_server.domain.webhooks import urls
from sync_server.domain.webhooks.outbox import message_id

log = structlog.get_logger("sync_server.domain.webhooks")

EXCERPT = 1000  # characters of a receiver's answer (or an error) kept in the attempt log
USER_AGENT = "webhost-sync-webhooks/1"
DUE_CUSTOMERS = 100  # customers looked at per database per round


@dataclass(frozen=True)
class Policy:
    allow_private: bool = False
    concurrency: int = 16
    poll_seconds: float = 1.0
    connect_timeout: float = 5.0
    timeout: float = 15.0
    max_response_bytes: int = 64 * 1024
    retry_base: float = 5.0
    retry_max_delay: float = 3600.0
    retry_window: float = 86400.0
    disable_after: float = 86400.0
    disable_after_failures: int = 20

    @property
    def lease_seconds(self) -> float:
        """A claim outlives any delivery: the POST is cut at `timeout`; the rest is margin."""
        return 2 * self.timeout + 5

    def retry_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before attempt `attempt + 1` (exponential, jittered in its upper half)."""
        ceiling = min(self.retry_base * 2 ** min(attempt - 1, 40), self.retry_max_delay)
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_max_delay))
        return delay


@dataclass
class Result:
    ok: bool
    status_code: int | None = None
    error: str | None = None
    response: str | None = None
    retry_after: float | None = None
    ms: int = 0


def _clean(text: str) -> str:
    """Storable text (PostgreSQL text holds no NUL), bounded."""
    return text.replace("\x00", "\ufffd")[:EXCERPT]


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP date: the backoff decides
    return seconds if 0 <= seconds < 10**7 else None


class Sender:
    """One signed POST, bounded in time and answer size, to a checked address."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(policy.timeout, connect=policy.connect_timeout),
            limits=httpx.Limits(max_connections=policy.concurrency * 2, max_keepalive_connections=policy.concurrency),
            follow_redirects=False,
            trust_env=False,  # no proxy or netrc from the environment
        )

    async def close(self) -> None:
        await self.client.aclose()

    @staticmethod
    def headers(secret: str, msg_id: str, body: str, now: dt.datetime) -> dict[str, str]:
        """The Standard Webhooks headers of one attempt (signed now: receivers check the timestamp)."""
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, now, body),
        }

    async def send(self, url: str, secret: str, msg_id: str, body: str) -> Result:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.policy.timeout):
                result = await self._send(url, secret, msg_id, body)
        except TimeoutError:
            result = Result(False, error=f"timed out after {self.policy.timeout:g} s")
        except urls.Refused as exc:
            result = Result(False, error=f"refused: {exc}")
        except httpx.ConnectError as exc:
            result = Result(False, error=_clean(f"connection failed: {exc or type(exc).__name__}"))
        except httpx.TimeoutException as exc:
            result = Result(False, error=f"timed out ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            result = Result(False, error=_clean(f"{type(exc).__name__}: {exc}"))
        result.ms = int((time.monotonic() - started) * 1000)
        return result

    async def _send(self, url: str, secret: str, msg_id: str, body: str) -> Result:
        addresses = await urls.resolve(url, allow_private=self.policy.allow_private)
        target = urls.pinned(url, addresses[0])
        headers = {
            **self.headers(secret, msg_id, body, dt.datetime.now(dt.UTC)),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "accept-encoding": "identity",  # the size cap counts what arrives, no decompression
            "host": target.host_header,
        }
        extensions = {"sni_hostname": target.server_name} if target.server_name else {}
        cap = self.policy.max_response_bytes
        async with self.client.stream(
            "POST", target.url, content=body.encode(), headers=headers, extensions=extensions
        ) as response:
            received = bytearray()
            async for chunk in response.aiter_raw():
                received += chunk[: cap - len(received)]
                if len(received) >= cap:
                    break  # the rest is dropped with the connection
        text = _clean(received.decode("utf-8", "replace"))
        ok = 200 <= response.status_code < 300
        return Result(
            ok,
            status_code=response.status_code,
            error=None if ok else f"HTTP {response.status_code}",
            response=text or None,
            retry_after=_retry_after(response.headers.get("retry-after")),
        )


class DeliveryWorker:
    def __init__(self, registry: DatabaseRegistry, policy: Policy, stopping: asyncio.Event | None = None) -> None:
        self.registry = registry
        self.policy = policy
        self.stopping = stopping or asyncio.Event()
        self.sender = Sender(policy)
        self._slots = asyncio.Semaphore(policy.concurrency)
        self._in_flight: set[asyncio.Task] = set()
        self._by_customer: dict[uuid.UUID, int] = {}  # deliveries in flight per customer
        # one customer (a slow receiver, a backlog) holds at most half the slots: the others go on
        self.per_customer = max(1, policy.concurrency // 2)
        self._wake = asyncio.Event()
        self.delivered = 0  # counters for logs and benchmarks
        self.failed = 0
        self.now: Callable[[], float] = time.time

    def wake(self) -> None:
        """Look for due deliveries now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        log.info("webhook_worker_started", concurrency=self.policy.concurrency)
        try:
            while not self.stopping.is_set():
                self._wake.clear()  # a wake-up during the round below is kept for the wait after it
                try:
                    claimed = await self.round()
                except Exception:
                    log.exception("webhook_round_failed")
                    claimed = 0
                if not claimed:
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.policy.poll_seconds)
                    except TimeoutError:
                        pass
        finally:
            await self.drain()

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for deliveries in flight (what they claimed is recorded, or their lease runs out)."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=timeout or self.policy.timeout + 5)

    async def close(self) -> None:
        await self.drain()
        await self.sender.close()

    async def round(self) -> int:
        """One pass over every database: claims as many due rows as there are free slots."""
        claimed = 0
        databases = [self.registry.shared, *await self.registry.dedicated()]
        for db in dict.fromkeys(databases):
            async with db.platform() as conn:
                customers = await store.due_customers(conn, DUE_CUSTOMERS)
            random.shuffle(customers)  # no customer always first
            for customer_id in customers:
                if self.stopping.is_set():
                    return claimed
                claimed += await self._claim_and_send(db, customer_id)
        return claimed

    async def _claim_and_send(self, db: Database, customer_id: uuid.UUID) -> int:
        if self._free_slots() == 0:
            await self._slots.acquire()  # wait for one delivery to finish
            self._slots.release()
        free = min(self._free_slots(), self.per_customer - self._by_customer.get(customer_id, 0))
        if free <= 0:
            return 0
        async with db.tenant(customer_id) as conn:
            rows = await store.claim(conn, customer_id, limit=free, lease_seconds=self.policy.lease_seconds)
            secrets = await store.secrets_of(conn, [r["endpoint_id"] for r in rows]) if rows else {}
        for row in rows:
            await self._slots.acquire()
            task = asyncio.ensure_future(self._deliver(db, customer_id, row, secrets[row["endpoint_id"]]))
            self._in_flight.add(task)
            self._by_customer[customer_id] = self._by_customer.get(customer_id, 0) + 1
            task.add_done_callback(functools.partial(self._done, customer_id=customer_id))
        return len(rows)

    def _free_slots(self) -> int:
        return self.policy.concurrency - len(self._in_flight)

    def _done(self, task: asyncio.Task, *, customer_id: uuid.UUID) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        left = self._by_customer.pop(customer_id, 1) - 1
        if left:
            self._by_customer[customer_id] = left
        self._wake.set()  # the next of its queue may be due now
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook_delivery_crashed", error=repr(task.exception()))

    async def _deliver(self, db: Database, customer_id: uuid.UUID, row: asyncpg.Record, secret: str) -> None:
        msg_id = message_id(row["message_id"])
        result = await self.sender.send(row["url"], secret, msg_id, row["body"])
        attempt = row["attempts"]
        now = dt.datetime.now(dt.UTC)
        if result.ok:
            status, next_at = "delivered", None
        else:
            deadline = row["created_at"] + dt.timedelta(seconds=self.policy.retry_window)
            if now >= deadline:
                status, next_at = "dead", None
            else:
                status = "pending"
                next_at = min(
                    now + dt.timedelta(seconds=self.policy.retry_delay(attempt, result.retry_after)), deadline
                )
        async with db.tenant(customer_id) as conn:
            recorded = await store.finish(
                conn,
                customer_id,
                row["id"],
                attempt,
                status=status,
                next_attempt_at=next_at,
                status_code=result.status_code,
                error=result.error,
                response=result.response,
                duration_ms=result.ms,
            )
            disabled = None
            if recorded and not result.ok:
                disabled = await store.endpoint_failed(
                    conn,
                    row["endpoint_id"],
                    disable_after_seconds=self.policy.disable_after,
                    min_failures=self.policy.disable_after_failures,
                    reason=f"every delivery failed, last: {result.error}",
                )
        fields = {
            "customer_id": str(customer_id),
            "endpoint_id": str(row["endpoint_id"]),
            "delivery_id": str(row["id"]),
            "webhook_id": msg_id,
            "event_type": row["event_type"],
            "attempt": attempt,
            "status_code": result.status_code,
            "ms": result.ms,
        }
        if not recorded:
            log.warning("webhook_claim_lost", **fields)  # the lease ran out; another claim owns the row
        elif result.ok:
            self.delivered += 1
            log.info("webhook_delivered", **fields)
        else:
            self.failed += 1
            log.info("webhook_failed", status=status, error=result.error, next_attempt_at=next_at, **fields)
        if disabled is not None and not disabled["enabled"]:
            log.warning("webhook_endpoint_disabled", reason=disabled["disabled_reason"], **fields)


def policy_from(settings) -> Policy:
    return Policy(
        allow_private=settings.webhook_allow_private_urls,
        concurrency=settings.webhook_concurrency,
        poll_seconds=settings.webhook_poll_seconds,
        connect_timeout=settings.webhook_connect_timeout,
        timeout=settings.webhook_timeout,
        max_response_bytes=settings.webhook_max_response_bytes,
        retry_base=settings.webhook_retry_base,
        retry_max_delay=settings.webhook_retry_max_delay,
        retry_window=settings.webhook_retry_window,
        disable_after=settings.webhook_disable_after,
        disable_after_failures=settings.webhook_disable_after_failures,
    )
