"""What one running node holds: settings, the database registry, Redis (when configured), the
background jobs, and the start/stop order. app.py builds it; handlers reach it with runtime().
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import structlog
from quart import current_app

from storage import Database, DatabaseRegistry, migrator, partitions, sealed_columns, sealing
from sync_server.domain.accounts.api_keys import KeyCache
from sync_server.domain.billing.plans import PlanLimits
from sync_server.node.config import Settings

if TYPE_CHECKING:
    from storage.documents import UpdateLog
    from sync_server.domain.tracking.pipeline import Pipeline
    from sync_server.sync.rooms import RoomRegistry

log = structlog.get_logger("sync_server.node.runtime")

Hook = Callable[[], Awaitable[None]]


class Runtime:
    def __init__(self, settings: Settings) -> None:
        if not settings.database_url:
            raise ValueError("Runtime needs a database URL (the CLI starts the embedded one when unset)")
        self.settings = settings
        self.registry = DatabaseRegistry(
            Database(
                settings.database_url, settings.app_role(), min_size=settings.db_pool_min, max_size=settings.db_pool_max
            )
        )
        self.redis: Any = None
        self.rooms: RoomRegistry | None = None  # the sync core's rooms (wired in sync_server.node.app)
        self.update_log: UpdateLog | None = None  # the group-commit writer of every room's updates
        self.tracking: Pipeline | None = None  # the tracking Pipeline (sync_server.domain.tracking.install)
        self.metrics: Any = None  # sync_server.extensions.metrics.Metrics (GET /metrics)
        self.secret_key = settings.resolved_secret_key()
        sealing.install(settings.keyring())  # stored credentials are sealed with it (storage/sealing.py)
        self._tasks: set[asyncio.Task] = set()  # running background jobs; a finished one leaves at once
        self._started: list[Hook] = []  # run after the database is open, in order
        self._draining: list[Hook] = []  # run first on shutdown (close sockets, flush), reverse order
        self._stopping: list[Hook] = []  # run after draining, before the pools close, reverse order
        self.shutting_down = asyncio.Event()
        self._listeners: dict[str, list[Callable[..., Awaitable[None]]]] = {}
        self.api_keys = KeyCache(settings.api_key_cache_seconds)  # accepted API keys, briefly
        self.subscribe("api_key_revoked", self.api_keys.on_key_revoked)
        self.subscribe("customer_suspended", self.api_keys.on_customer_suspended)
        self.plan_limits = PlanLimits(self.registry)  # the one cache of plan limits (tracking, connections)
        self.subscribe("plan_changed", self.plan_limits.on_plan_changed)

    def subscribe(self, event: str, listener: Callable[..., Awaitable[None]]) -> None:
        """Listen for a domain event of this node, e.g. "customer_suspended" (customer_id=...)
        or "api_key_revoked" (customer_id=..., key_id=...)."""
        self._listeners.setdefault(event, []).append(listener)

    async def publish(self, event: str, **data: Any) -> None:
        """Tell every listener; one failing listener is logged and does not stop the others."""
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
            applied = await migrator.migrate(self.settings.database_url)
            if applied:
                log.info("migrations_applied", versions=applied)
        await self.db.open()
        # Before the routes are read: credentials written before migration 0120 (or by a node without
        # it) are sealed now, since SQL cannot encrypt with the application's key.
        await sealed_columns.reseal(self.db, rotate=False)
        await self.registry.reload()
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


_serving: ContextVar[Runtime] = ContextVar("runtime")


def serving(rt: Runtime):
    """Mark `rt` as the runtime of the current task's request (endpoints that answer without a
    Quart app context: api.rest_endpoint); returns the token to reset."""
    return _serving.set(rt)


def done_serving(token) -> None:
    _serving.reset(token)


def runtime() -> Runtime:
    """The Runtime of the app handling the current request or websocket."""
    rt = _serving.get(None)
    return rt if rt is not None else current_app.extensions["webhost"]
