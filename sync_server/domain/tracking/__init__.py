"""GPS tracking: track documents and tracker HTTP posts become validated, geofenced, quota-checked
rows. The pipeline (pipeline.py) lists its steps in one place; one small module per step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sync_server.domain.billing.plans import DEFAULT_PLAN
from sync_server.domain.tracking.filters import Rules
from sync_server.domain.tracking.pipeline import Batch, Outcome, Pipeline

if TYPE_CHECKING:
    from sync_server.config import Settings
    from sync_server.domain.runtime import Runtime

__all__ = ["Batch", "Outcome", "Pipeline", "Rules", "install", "rules_from"]


def rules_from(settings: Settings) -> Rules:
    return Rules(
        max_future_ms=int(settings.tracking_max_future * 1000),
        day_slack_ms=int(settings.tracking_day_slack * 1000),
        max_accuracy_m=settings.tracking_max_accuracy,
        max_speed_mps=settings.tracking_max_speed / 3.6,
    )


def install(rt: Runtime) -> Pipeline:
    """Build the node's pipeline, hook it into the rooms (track documents in, the fleet document's
    live map out) and start the retention job with the runtime."""
    from sync_server.domain.tracking import fleet_events, retention
    from sync_server.domain.tracking.event_feed import EventFeed
    from sync_server.domain.tracking.materializer import TrackMaterializer
    from sync_server.domain.tracking.track_reader import reader_for

    pipeline = Pipeline(
        rt.registry,
        rules_from(rt.settings),
        bulk_concurrency=rt.settings.tracking_bulk_concurrency,
        plan_limits=rt.plan_limits,
    )
    rooms = getattr(rt, "rooms", None)
    if rooms is not None:
        materializer = TrackMaterializer(
            pipeline,
            rt.registry,
            flush_seconds=rt.settings.tracking_flush,
            batch_points=rt.settings.tracking_batch_points,
            reader=reader_for(rt.settings.tracking_readers),
        )
        materializer.rooms = rooms
        rooms.hooks.add(materializer)
        pipeline.on_latest(materializer.push_latest)
        rt.event_feed = EventFeed(rooms)  # the fleet document's `events` array (other writers: rt.event_feed.publish)
        pipeline.on_events(rt.event_feed.geofence_events)
        feed = rt.event_feed

        async def fleet_feed(customer_id: str, changes) -> None:
            await feed.publish(customer_id, changes.feed_entries())

        pipeline.on_fleet_events(fleet_feed)
        rt.on_stop(materializer.stop)
        rt.subscribe("vehicle_deleted", materializer.on_vehicle_deleted)

    async def start_retention() -> None:
        rt.spawn(
            retention.loop(
                rt.registry,
                DEFAULT_PLAN,
                rt.settings.retention_batch_rows,
                rt.settings.maintenance_interval,
                rt.shutting_down,
            ),
            "tracking_retention",
        )

    async def start_offline() -> None:
        rt.spawn(
            fleet_events.offline_loop(
                rt.registry, fleet_events.OFFLINE_CHECK_SECONDS, rt.shutting_down, getattr(rt, "event_feed", None)
            ),
            "tracking_offline",
        )

    rt.on_start(start_retention)
    rt.on_start(start_offline)
    return pipeline
