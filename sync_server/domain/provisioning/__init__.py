"""Provisioning: the decision engine, deployments and their drivers, and live tenant migration.

`install(rt)` wires it into a Runtime: resume interrupted jobs on start, keep the partitions of
dedicated databases, re-evaluate the recommendation on every "plan_changed" event, and (with Redis)
reload the routing table when another node switched a customer's database (and hold a customer's
writes while another node migrates it: cluster_pause).
"""

from __future__ import annotations

import structlog

from storage import partitions
from sync_server.domain.provisioning import (
    cluster_pause,
    deployments,
    recommendations,
    route_changes,
    tenant_migration,
)

log = structlog.get_logger("sync_server.domain.provisioning")


def install(rt) -> None:
    rt.subscribe("plan_changed", recommendations.on_plan_changed(rt))

    async def started() -> None:
        await deployments.resume(rt)
        await tenant_migration.resume(rt)
        await _maintain_dedicated(rt)
        rt.spawn(_maintenance_loop(rt), "dedicated_partitions")
        if rt.redis is not None:  # several nodes: a route switched elsewhere is reloaded here, and
            # another node's tenant migration pauses this node's writes of its customer
            rt.spawn(route_changes.listen(rt, cluster_pause.Holds(rt)), "route_changes")

    rt.on_start(started)


async def _maintain_dedicated(rt) -> None:
    for db in await rt.registry.dedicated():
        try:
            await partitions.maintain(db, rt.settings.partition_days_ahead)
        except Exception:
            log.exception("dedicated_partition_maintenance_failed", database=db.name)


async def _maintenance_loop(rt) -> None:
    import asyncio

    while True:
        await asyncio.sleep(rt.settings.maintenance_interval)
        await _maintain_dedicated(rt)
