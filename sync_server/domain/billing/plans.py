"""Plan limits: the one home of "may this customer have one more X?" (vehicles, drivers,
geofences, GPS points per day, sync connections).

A customer's plan is the plan of its active subscription (DEFAULT_PLAN when it has none). Every
reader goes through one `PlanLimits` service per node (Runtime.plan_limits), which holds the one
cache of each customer's limits (LIMITS_TTL; dropped at once on this node's "plan_changed" event,
so a change made on another node is seen within LIMITS_TTL):
- REST creates (`within_limit`, `insert_within_limit`) take a transaction-scoped advisory lock per
  customer and resource on the customer's database and count only after it, in the same
  transaction: 20 concurrent creates cannot slip a 6th vehicle into a 5-vehicle plan. Creates read
  the plan fresh (never the cache), so an upgrade is usable at once.
- the tracking pipeline reads `limits()` (cached) and counts points per day itself under the same
  quota lock (`lock_quota`; the per-day rule is sync_server/domain/tracking/quota.py);
- the connection limit (sync_server/extensions/shared_limits.py) reads `limits().connections`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from storage import plans as plan_store
from storage import usage as usage_store
from storage.database import Database
from storage.registry import DatabaseRegistry

DEFAULT_PLAN = "hobby"
GPS_POINTS_METRIC = "gps_points"  # usage_metrics.metric counting points per day
FRAMES_TOO_BIG_METRIC = "sync_frames_too_big"  # websocket frames refused over SYNC_MAX_MESSAGE_BYTES, per day
RESOURCES = ("vehicles", "drivers", "geofences", "gps_points_per_day")
LIMITS_TTL = 30.0  # seconds a node trusts its cached copy of a customer's plan limits


class UnknownPlan(LookupError):
    """No plan with this id (creating a customer on it, or changing to it)."""


@dataclass(frozen=True)
class Limits:
    plan_id: str
    vehicles: int
    drivers: int
    geofences: int
    gps_points_per_day: int
    retention_days: int
    connections: int

    def of(self, resource: str) -> int:
        if resource not in RESOURCES:
            raise ValueError(f"unknown plan-limited resource {resource!r}")
        return getattr(self, resource)

    @classmethod
    def from_plan(cls, row) -> Limits:
        return cls(
            row["id"],
            row["vehicle_limit"],
            row["driver_limit"],
            row["geofence_limit"],
            row["gps_points_per_day"],
            row["retention_days"],
            row["connection_limit"],
        )


class PlanLimitReached(Exception):
    def __init__(self, resource: str, limit: int, current: int, plan_id: str) -> None:
        super().__init__(f"plan {plan_id!r} allows {limit} {resource}; {current} in use")
        self.resource = resource
        self.limit = limit
        self.current = current
        self.plan_id = plan_id

    def details(self) -> dict:
        return {"resource": self.resource, "limit": self.limit, "current": self.current, "plan_id": self.plan_id}


async def current_limits(shared: Database, customer_id) -> Limits:
    """The limits of the customer's current plan (control plane: always the shared database)."""
    async with shared.tenant(customer_id) as conn:
        return await limits_in(conn, customer_id)


async def limits_in(conn: asyncpg.Connection, customer_id, *, locking: str | None = None) -> Limits:
    """current_limits inside a tenant transaction the caller holds on the shared database; with
    `locking` (a resource), the same round trip takes that resource's quota lock."""
    if locking is None:
        row = await plan_store.of_customer(conn, customer_id)
    else:
        row = await plan_store.of_customer_locking(conn, customer_id, usage_store.quota_lock_key(customer_id, locking))
    if row is None:
        row = await plan_store.get(conn, DEFAULT_PLAN)
    return Limits.from_plan(row)


async def check_limit(
    conn: asyncpg.Connection,
    customer_id,
    resource: str,
    limits: Limits,
    *,
    adding: int = 1,
    current: int | None = None,
    locked: bool = False,
) -> int:
    """Inside the caller's tenant transaction: lock the customer's quota for `resource` (unless
    `locked`: the caller already holds it), count (unless `current` is given) and raise
    PlanLimitReached when `adding` more would pass the limit. Returns the count before adding."""
    limit = limits.of(resource)
    if not locked:
        await usage_store.lock_quota(conn, customer_id, resource)
    if current is None:
        if resource == "gps_points_per_day":
            current = await usage_store.gps_points_today(conn, GPS_POINTS_METRIC)
        else:
            current = await usage_store.count(conn, resource)
    if current + adding > limit:
        raise PlanLimitReached(resource, limit, current, limits.plan_id)
    return current


async def _database_and_known_limits(registry: DatabaseRegistry, customer_id) -> tuple[Database, Limits | None]:
    """The customer's database and, when it is a dedicated one (which holds no plans), the plan's
    limits read fresh from the shared one; None: the plan is read in the customer's own database."""
    db = await registry.for_customer(customer_id)
    return db, None if db is registry.shared else await current_limits(registry.shared, customer_id)


@asynccontextmanager
async def _quota_locked(
    registry: DatabaseRegistry, customer_id, resource: str
) -> AsyncIterator[tuple[asyncpg.Connection, Limits]]:
    """A tenant transaction on the customer's database holding its quota lock for `resource`, and
    the plan's limits. Whatever is counted against them must be read by a later statement (after
    the lock): `within_limit` counts (PlanLimits.insert_within_limit's one statement takes the same
    lock and counts after it itself: webhost_quota_count)."""
    db, limits = await _database_and_known_limits(registry, customer_id)
    async with db.tenant(customer_id) as conn:
        if limits is None:  # the plan lives in the same database: one statement reads it and takes the lock
            limits = await limits_in(conn, customer_id, locking=resource)
        else:
            await usage_store.lock_quota(conn, customer_id, resource)
        yield conn, limits


async def _limit_reached(conn: asyncpg.Connection, resource: str, limits: Limits) -> PlanLimitReached:
    """The refusal of a counting INSERT that inserted nothing (counted again for the details)."""
    return PlanLimitReached(resource, limits.of(resource), await usage_store.count(conn, resource), limits.plan_id)


@asynccontextmanager
async def within_limit(
    registry: DatabaseRegistry, customer_id, resource: str, adding: int = 1
) -> AsyncIterator[asyncpg.Connection]:
    """A tenant transaction on the customer's database in which `adding` more `resource` fit the plan."""
    async with _quota_locked(registry, customer_id, resource) as (conn, limits):
        await check_limit(conn, customer_id, resource, limits, adding=adding, locked=True)
        yield conn


async def usage(registry: DatabaseRegistry, customer_id) -> dict[str, int]:
    """Current use of every plan-limited resource, plus document storage in bytes."""
    db = await registry.for_customer(customer_id)
    async with db.tenant(customer_id) as conn:
        out = {resource: await usage_store.count(conn, resource) for resource in usage_store.COUNTABLE}
        out["gps_points_per_day"] = await usage_store.gps_points_today(conn, GPS_POINTS_METRIC)
        out["storage_bytes"] = await usage_store.document_bytes(conn)
        today = await usage_store.of_day(conn, customer_id, datetime.now(UTC).date(), FRAMES_TOO_BIG_METRIC)
        out["sync_frames_too_big_today"] = today.get(FRAMES_TOO_BIG_METRIC, 0)
    return out


async def count_frame_too_big(registry: DatabaseRegistry, customer_id) -> None:
    """One more websocket frame of the customer refused over the hard limit today (GET /api/v1/usage
    shows it: the operator's sign that a client cannot sync)."""
    db = await registry.for_customer(customer_id)
    async with db.tenant(customer_id) as conn:
        await usage_store.add(conn, customer_id, [(datetime.now(UTC).date(), FRAMES_TOO_BIG_METRIC, 1)])


def exceeded(limits: Limits, used: dict[str, int]) -> list[dict]:
    """Each resource whose use is above what `limits` allow (for refusing a downgrade)."""
    return [{"resource": r, "usage": used[r], "limit": limits.of(r)} for r in RESOURCES if used[r] > limits.of(r)]


class PlanLimits:
    """The node's one plan-limit service and its one cache (see the module docstring)."""

    def __init__(self, registry: DatabaseRegistry, ttl: float = LIMITS_TTL) -> None:
        self.registry = registry
        self.ttl = ttl
        self._cached: dict[str, tuple[float, Limits]] = {}  # customer id -> (expires, limits)
        # customer id -> the one read in flight: when the cached copy expires under a fleet joining
        # at once, the database is asked once, not once per phone
        self._reading: dict[str, asyncio.Future] = {}

    async def limits(self, customer_id) -> Limits:
        """The customer's current limits, cached for `ttl` seconds."""
        key = str(customer_id)
        cached = self._cached.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        reading = self._reading.get(key)
        if reading is None:
            reading = self._reading[key] = asyncio.ensure_future(self._read(key))
            reading.add_done_callback(lambda done: self._read_done(key, done))
        return await asyncio.shield(reading)  # an asker that goes away does not cancel the others' read

    async def _read(self, key: str) -> Limits:
        now = time.monotonic()
        limits = await current_limits(self.registry.shared, key)
        if self._reading.get(key) is asyncio.current_task():  # not forgotten while it was read
            self._cached[key] = (now + self.ttl, limits)
        return limits

    def _read_done(self, key: str, done: asyncio.Future) -> None:
        if self._reading.get(key) is done:
            del self._reading[key]
        if not done.cancelled():
            done.exception()  # retrieved: every asker still there gets it from its own await

    async def fresh(self, customer_id) -> Limits:
        """The customer's limits read now (what GET /api/v1/usage shows), and the cache refreshed."""
        limits = await current_limits(self.registry.shared, str(customer_id))
        self._cached[str(customer_id)] = (time.monotonic() + self.ttl, limits)
        return limits

    async def report(self, customer_id, *, connections: int) -> dict:
        """Usage against every plan limit, read now (GET /api/v1/usage, the operator console's bars):
        each limited resource as {used, limit} (`connections`: the sync connections open now, which
        the caller counted), plus storage and today's refused frames."""
        limits = await self.fresh(customer_id)
        used = await usage(self.registry, customer_id)
        return {
            "plan_id": limits.plan_id,
            "vehicles": {"used": used["vehicles"], "limit": limits.vehicles},
            "drivers": {"used": used["drivers"], "limit": limits.drivers},
            "geofences": {"used": used["geofences"], "limit": limits.geofences},
            "gps_points_today": {"used": used["gps_points_per_day"], "limit": limits.gps_points_per_day},
            "connections": {"used": connections, "limit": limits.connections},
            "storage_bytes": used["storage_bytes"],
            "sync_frames_too_big_today": used["sync_frames_too_big_today"],
        }

    def forget(self, customer_id) -> None:
        """Drop the cached copy; a read in flight (begun before the change) is not shared any more."""
        self._cached.pop(str(customer_id), None)
        self._reading.pop(str(customer_id), None)

    async def on_plan_changed(self, customer_id, **_ignored) -> None:
        """Listener of the "plan_changed" event (Runtime subscribes it)."""
        self.forget(customer_id)

    def drop_expired(self) -> None:
        """Forget the entries of customers that stopped asking (called by periodic jobs)."""
        now = time.monotonic()
        for key, (expires, _limits) in list(self._cached.items()):
            if expires <= now:
                del self._cached[key]

    @property
    def cached_customers(self) -> int:
        return len(self._cached)

    def within_limit(self, customer_id, resource: str, adding: int = 1):
        """A tenant transaction in which `adding` more `resource` fit the plan (PlanLimitReached)."""
        return within_limit(self.registry, customer_id, resource, adding)

    async def insert_within_limit(
        self,
        customer_id,
        resource: str,
        insert: Callable[[Database, plan_store.LimitOf], Awaitable[asyncpg.Record | None]],
    ) -> asyncpg.Record:
        """Run `insert(db, limit)` on the customer's database: a storage INSERT that, in its one
        statement, takes the quota lock, counts `resource` after it (webhost_quota_count), reads the
        plan's limit when `limit` does not carry it, and inserts nothing at the limit (one round
        trip). Raises PlanLimitReached when it inserted nothing (the plan and the count read again
        for the details: only then)."""
        if resource not in RESOURCES:
            raise ValueError(f"unknown plan-limited resource {resource!r}")
        db, known = await _database_and_known_limits(self.registry, customer_id)
        row = await insert(db, plan_store.LimitOf(None if known is None else known.of(resource), DEFAULT_PLAN))
        if row is not None:
            return row
        async with db.tenant(customer_id) as conn:
            raise await _limit_reached(conn, resource, known or await limits_in(conn, customer_id))

    @staticmethod
    async def lock_quota(conn: asyncpg.Connection, customer_id, resource: str) -> None:
        """Take the customer's quota lock for `resource` in the caller's transaction."""
        await usage_store.lock_quota(conn, customer_id, resource)
