"""Retention per plan: a customer's positions, geofence events and finished webhook deliveries
(the delivery log) older than its plan's retention_days are deleted by a periodic job, in batches of RETENTION_BATCH_ROWS rows, each its
own short transaction (never one huge DELETE). Whole days past the LONGEST retention are dropped
as partitions by storage.partitions (the runtime's maintenance job)."""

from __future__ import annotations

import asyncio
import datetime as dt

import structlog

from storage import fleet_events as fleet_event_store
from storage import geofence_events as event_store
from storage import plans as plan_store
from storage import positions as position_store
from storage import webhooks as webhook_store
from storage.registry import DatabaseRegistry

log = structlog.get_logger("sync_server.domain.tracking.retention")


async def run_once(
    registry: DatabaseRegistry, default_plan: str, batch_rows: int, now: dt.datetime | None = None
) -> dict[str, int]:
    now = now or dt.datetime.now(dt.UTC)
    async with registry.shared.operator("tracking_retention") as conn:
        customers = await plan_store.retention_by_customer(conn, default_plan)
    removed = {"positions": 0, "geofence_events": 0, "webhook_deliveries": 0, "fleet_events": 0, "trips": 0, "stops": 0}
    for row in customers:
        cid, cutoff = row["id"], now - dt.timedelta(days=row["retention_days"])
        db = await registry.for_customer(cid)
        for kind, delete in (
            ("positions", position_store.delete_before),
            ("geofence_events", event_store.delete_before),
            ("webhook_deliveries", webhook_store.delete_finished_before),
            ("fleet_events", fleet_event_store.delete_before),
            ("trips", fleet_event_store.delete_trips_before),
            ("stops", fleet_event_store.delete_stops_before),
        ):
            while True:
                async with db.tenant(cid) as conn:
                    n = await delete(conn, cid, cutoff, batch_rows)
                removed[kind] += n
                if n < batch_rows:
                    break
                await asyncio.sleep(0)  # let the server breathe between batches
    if any(removed.values()):
        log.info("retention_applied", **removed)
    return removed


async def loop(
    registry: DatabaseRegistry, default_plan: str, batch_rows: int, interval: float, stopping: asyncio.Event
) -> None:
    while not stopping.is_set():
        try:
            await run_once(registry, default_plan, batch_rows)
        except Exception:
            log.exception("retention_failed")
        try:
            await asyncio.wait_for(stopping.wait(), interval)
        except TimeoutError:
            pass
