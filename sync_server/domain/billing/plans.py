"""Plan limits: the one home of "may this customer have one more X?".

A customer's plan is the plan of its active subscription (DEFAULT_PLAN when it has none). Creating a
limited resource goes through `within_limit`, which takes a transaction-scoped advisory lock per
customer and resource on the customer's database, counts, and only then lets the caller insert in
the same transaction: 20 concurrent creates cannot slip a 6th vehicle into a 5-vehicle plan.
The GPS pipeline uses `current_limits(...).gps_points_per_day` with `check_limit(..., current=n)`.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from storage import plans as plan_store
from storage import usage as usage_store
from storage.database import Database
from storage.registry import DatabaseRegistry

DEFAULT_PLAN = "hobby"
GPS_POINTS_METRIC = "gps_points"  # usage_metrics.metric counting points per day
RESOURCES = ("vehicles", "drivers", "geofences", "gps_points_per_day")


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
        return cls(row["id"], row["vehicle_limit"], row["driver_limit"], row["geofence_limit"],
                   row["gps_points_per_day"], row["retention_days"], row["connection_limit"])


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


async def check_limit(conn: asyncpg.Connection, customer_id, resource: str, limits: Limits, *, adding: int = 1,
                      current: int | None = None, locked: bool = False) -> int:
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


@asynccontextmanager
async def quota_locked(registry: DatabaseRegistry, customer_id,
                       resource: str) -> AsyncIterator[tuple[asyncpg.Connection, Limits]]:
    """A tenant transaction on the customer's database holding its quota lock for `resource`, and
    the plan's limits. Whatever is counted against them must be read by a later statement (after
    the lock): `within_limit` counts; a caller whose INSERT counts in its own statement (one round
    trip less) raises `await limit_reached(...)` when nothing was inserted."""
    db = await registry.for_customer(customer_id)
    limits = None if db is registry.shared else await current_limits(registry.shared, customer_id)
    async with db.tenant(customer_id) as conn:
        if limits is None:  # the plan lives in the same database: one statement reads it and takes the lock
            limits = await limits_in(conn, customer_id, locking=resource)
        else:
            await usage_store.lock_quota(conn, customer_id, resource)
        yield conn, limits


async def limit_reached(conn: asyncpg.Connection, resource: str, limits: Limits) -> PlanLimitReached:
    """The refusal of a counting INSERT that inserted nothing (counted again for the details)."""
    return PlanLimitReached(resource, limits.of(resource), await usage_store.count(conn, resource), limits.plan_id)


@asynccontextmanager
async def within_limit(registry: DatabaseRegistry, customer_id, resource: str,
                       adding: int = 1) -> AsyncIterator[asyncpg.Connection]:
    """A tenant transaction on the customer's database in which `adding` more `resource` fit the plan."""
    async with quota_locked(registry, customer_id, resource) as (conn, limits):
        await check_limit(conn, customer_id, resource, limits, adding=adding, locked=True)
        yield conn


async def usage(registry: DatabaseRegistry, customer_id) -> dict[str, int]:
    """Current use of every plan-limited resource, plus document storage in bytes."""
    db = await registry.for_customer(customer_id)
    async with db.tenant(customer_id) as conn:
        out = {resource: await usage_store.count(conn, resource) for resource in usage_store.COUNTABLE}
        out["gps_points_per_day"] = await usage_store.gps_points_today(conn, GPS_POINTS_METRIC)
        out["storage_bytes"] = await usage_store.document_bytes(conn)
    return out


def exceeded(limits: Limits, used: dict[str, int]) -> list[dict]:
    """Each resource whose use is above what `limits` allow (for refusing a downgrade)."""
    return [{"resource": r, "usage": used[r], "limit": limits.of(r)} for r in RESOURCES if used[r] > limits.of(r)]
