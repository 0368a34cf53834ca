"""What one running node holds: settings, the database registry, Redis (when configured), the
node-wide domain caches and event listeners, the background jobs, and the start/stop order.

The service container that domain services and REST handlers receive; the composition root
(sync_server.node.app) builds it and wires the sync core and extensions onto it; REST handlers reach
the one serving their request with api.current.runtime().
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import structlog

from storage import Database, DatabaseRegistry, migrator, partitions, sealed_columns, sealing
from sync_server.config import Settings
from sync_server.domain.accounts.admission_cache import AdmissionCache
from sync_server.domain.accounts.api_keys import KeyCache
from sync_server.domain.billing.plans import PlanLimits

if TYPE_CHECKING:
    from storage.documents import UpdateLog
    from sync_server.domain.billing.stripe_sync import StripeSync
    from sync_server.domain.tracking.event_feed import EventFeed
    from sync_server.domain.tracking.pipeline import Pipeline
    from sync_server.domain.webhooks.delivery import DeliveryWorker
    from sync_server.sync.rooms import RoomRegistry

log = structlog.get_logger("sync_server.domain.runtime")

Hook = Callable[[], Awaitable[None]]
T = TypeVar("T")

# Domain events every node must hear (with Redis): each one ends or narrows what live sockets and
# caches may do. `publish` tells this node's listeners, then the others through the control channel
# (`{REDIS_PREFIX}events`, on the subscription of provisioning/route_changes.listen).
CLUSTER_EVENTS = frozenset(
    {
        "customer_suspended",
        "api_key_revoked",
        "plan_changed",
        "vehicle_deleted",
        "credentials_changed",
        "app_session_ended",  # customer_id, session_id: a dispatcher app signed out or its password changed
    }
)
MAX_EVENT_BYTES = 4096  # a control message larger than this is not ours: ignored


class _Wired(Generic[T]):
    """A part the composition root (sync_server.node.app) sets after construction; reading it
    before then raises, naming it, instead of answering None."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, rt: Runtime, owner: type | None = None) -> T:
        part = rt.__dict__.get(self.name)
        if part is None:
            # AttributeError: getattr(rt, "rooms", None) is how a part that may be absent is asked for
            raise AttributeError(f"Runtime.{self.name} is not wired (the composition root sets it)")
        return part

    def __set__(self, rt: Runtime, part: T) -> None:
        rt.__dict__[self.name] = part


class Runtime:
    rooms: _Wired[RoomRegistry] = _Wired()  # the sync core's rooms
    update_log: _Wired[UpdateLog] = _Wired()  # the group-commit writer of every room's updates
    tracking: _Wired[Pipeline] = _Wired()  # the tracking Pipeline (sync_server.domain.tracking.install)

    def __init__(self, settings: Settings) -> None:
        if not settings.database_url:
            raise ValueError("Runtime needs a database URL (the CLI starts the embedded one when unset)")
        self.settings = settings
        self.database_url: str = settings.database_url
        self.registry = DatabaseRegistry(
            Database(
                self.database_url, settings.app_role(), min_size=settings.db_pool_min, max_size=settings.db_pool_max
            )
        )
        self.redis: Any = None
        self.event_feed: EventFeed | None = None  # the fleet documents' live event feed (tracking.install)
        self.webhooks: DeliveryWorker | None = None  # the webhook delivery worker (domain.webhooks.install)
        self.metrics: Any = None  # sync_server.extensions.metrics.Metrics (GET /metrics)
        self.billing_provider: StripeSync | None = None  # Stripe pusher with STRIPE_SECRET_KEY (billing.stripe_sync)
        self.secret_key = settings.resolved_secret_key()
        sealing.install(settings.keyring())  # stored credentials are sealed with it (storage/sealing.py)
        self._tasks: set[asyncio.Task] = set()  # running background jobs; a finished one leaves at once
        self._started: list[Hook] = []  # run after the database is open, in order
        self._draining: list[Hook] = []  # run first on shutdown (close sockets, flush), reverse order
        self._stopping: list[Hook] = []  # run after draining, before the pools close, reverse order
        self.shutting_down = asyncio.Event()
        self._listeners: dict[str, list[Callable[..., Awaitable[None]]]] = {}
        self.instance = secrets.token_hex(8)  # tells this node's own control messages apart
        self.api_keys = KeyCache(settings.api_key_cache_seconds)  # accepted API keys, briefly
        self.subscribe("api_key_revoked", self.api_keys.on_key_revoked)
        self.subscribe("customer_suspended", self.api_keys.on_customer_suspended)
        self.subscribe("credentials_changed", self.api_keys.on_credentials_changed)
        self.admissions = AdmissionCache(settings.api_key_cache_seconds)  # sync joins' customer/session reads
        self.subscribe("customer_suspended", self.admissions.on_customer_changed)
        self.subscribe("credentials_changed", self.admissions.on_customer_changed)
        self.subscribe("app_session_ended", self.admissions.on_session_ended)
        self.subscribe("control_resubscribed", self.admissions.on_resubscribed)
        self.plan_limits = PlanLimits(self.registry)  # the one cache of plan limits (tracking, connections)
        self.subscribe("plan_changed", self.plan_limits.on_plan_changed)

    def subscribe(self, event: str, listener: Callable[..., Awaitable[None]]) -> None:
        """Listen for a domain event of this node, e.g. "customer_suspended" (customer_id=...)
        or "api_key_revoked" (customer_id=..., key_id=...)."""
        self._listeners.setdefault(event, []).append(listener)

    async def publish(self, event: str, **data: Any) -> None:
        """Tell every listener; one failing listener is logged and does not stop the others. A
        CLUSTER_EVENTS event (string data only) then reaches the listeners of every other node."""
        await self._deliver(event, data)
        if event in CLUSTER_EVENTS and self.redis is not None:
            message = json.dumps({"event": event, "from": self.instance, "data": data})
            try:
                await asyncio.wait_for(self.redis.publish(self.events_channel, message), 5.0)
            except Exception as exc:  # best effort: the other nodes' periodic revalidation is the net
                log.warning("cluster_event_publish_failed", event_name=event, error=str(exc) or type(exc).__name__)

    @property
    def events_channel(self) -> str:
        return f"{self.settings.redis_prefix}events"

    async def receive_cluster_event(self, raw: bytes | str) -> None:
        """A control message of another node (route_changes.listen hands it here)."""
        try:
            if len(raw) > MAX_EVENT_BYTES:
                raise ValueError("too large")
            message = json.loads(raw)
            event, origin, data = message["event"], message["from"], message["data"]
            if event not in CLUSTER_EVENTS or not isinstance(data, dict):
                raise ValueError(f"not a cluster event: {event!r}")
            data = {str(k): str(v) for k, v in data.items() if isinstance(v, str)}
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("cluster_event_malformed", error=str(exc) or type(exc).__name__)
            return
        if origin == self.instance:
            return  # our own: already delivered here
        log.info("cluster_event_received", event_name=event, **data)
        await self._deliver(event, data)

    async def _deliver(self, event: str, data: dict[str, Any]) -> None:
        for listener in self._listeners.get(event, []):
            try:
                await listener(**data)
            except Exception:
                log.exception("event_listener_failed", event_name=event)

    @property
    def db(self) -> Database:
        return self.registry.shared

    def on_start(self, hook: Hook) -> None:
        self._started.append(hook)

    def on_drain(self, hook: Hook) -> None:
        self._draining.append(hook)

    def on_stop(self, hook: Hook) -> None:
        self._stopping.append(hook)

    def spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task:
        """A background job, cancelled at shutdown if still running; its failure is logged, never
        silent. Held only while it runs: rooms spawn a load and an eviction job each, so a list of
        every job ever spawned grew with every room a node ever served."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(self._job_done)
        self._tasks.add(task)
        return task

    def _job_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        _log_failure(task)

    @property
    def running_jobs(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        if self.settings.migrate_on_start:
            applied = await migrator.migrate(self.database_url)
            if applied:
                log.info("migrations_applied", versions=applied)
        await self.db.open()
        # Before the routes are read: credentials written before migration 0120 (or by a node without
        # it) are sealed now, since SQL cannot encrypt with the application's key.
        await sealed_columns.reseal(self.db, rotate=False)
        await self.registry.reload()
        for dedicated in await self.registry.dedicated():  # tenant tables with credentials move with customers
            await sealed_columns.reseal(dedicated, rotate=False)
        if self.settings.redis_url:
            import redis.asyncio as aioredis

            self.redis = aioredis.from_url(self.settings.redis_url)
        await partitions.maintain(self.db, self.settings.partition_days_ahead)
        self.spawn(self._maintenance_loop(), "maintenance")
        for hook in self._started:
            await hook()
        log.info("runtime_started")

    async def drain(self) -> None:
        """Stop taking work and flush: websockets closed with 1001, pending updates written."""
        if self.shutting_down.is_set():
            return
        self.shutting_down.set()
        for hook in reversed(self._draining):
            await _guarded(hook)

    async def stop(self) -> None:
        await self.drain()
        for hook in reversed(self._stopping):
            await _guarded(hook)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.redis is not None:
            await self.redis.aclose()
        await self.registry.close()
        log.info("runtime_stopped")

    async def readiness(self) -> dict[str, dict]:
        checks: dict[str, dict] = {}
        try:
            async with self.db.platform() as conn:
                current = await migrator.is_current(conn)
            checks["postgres"] = {"ok": True}
            checks["migrations"] = {"ok": current, **({} if current else {"error": "pending migrations"})}
        except Exception as exc:  # readiness reports, it does not raise
            checks["postgres"] = {"ok": False, "error": str(exc) or type(exc).__name__}
        if self.redis is not None:
            try:
                await asyncio.wait_for(self.redis.ping(), 2)
                checks["redis"] = {"ok": True, "required": False}
            except Exception as exc:
                # A node keeps serving its own clients without Redis: degraded, not down.
                checks["redis"] = {"ok": False, "required": False, "error": str(exc) or type(exc).__name__}
        return checks

    async def _maintenance_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.maintenance_interval)
            try:
                created, dropped = await partitions.maintain(self.db, self.settings.partition_days_ahead)
                log.info("partitions_maintained", created=created, dropped=dropped)
            except Exception:
                log.exception("partition_maintenance_failed")


async def _guarded(hook: Hook) -> None:
    try:
        await hook()
    except Exception:
        log.exception("shutdown_hook_failed", hook=getattr(hook, "__qualname__", repr(hook)))


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background_job_failed", job=task.get_name(), error=repr(task.exception()))
