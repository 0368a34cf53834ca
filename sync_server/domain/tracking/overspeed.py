"""overspeed.started: one event per episode over the speed limit, with its max speed.

The limit at a fix is the lowest of the customer's default, the vehicle's and those of the speed-
limited geofences holding the fix. An episode runs from the first fix over its limit to the last one
before a fix at or under it; it is an event when it lasted `overspeed_min_s`. The event is recorded
when the episode is over (its max speed is known then), at the episode's start time."""

from __future__ import annotations

from sync_server.domain.tracking.analysis import Fix, Output, iso, kmh
from sync_server.domain.tracking.thresholds import Thresholds

OVERSPEED = "overspeed.started"


def step(state: dict, fix: Fix, prev: Fix | None, th: Thresholds, out: Output) -> None:
    episode = state.get("over")
    if fix.limit is not None and fix.speed > fix.limit:
        if episode is None:
            state["over"] = {
                "ms": fix.ms,
                "lat": fix.lat,
                "lng": fix.lng,
                "max": fix.speed,
                "last": fix.ms,
                "limit": fix.limit,
            }
        else:
            episode["max"] = max(episode["max"], fix.speed)
            episode["last"] = fix.ms
        return
    if episode is not None:
        state["over"] = None
        duration = (episode["last"] - episode["ms"]) / 1000
        if duration >= th.overspeed_min_s:
            out.event(
                OVERSPEED,
                episode["ms"],
                episode["lat"],
                episode["lng"],
                {
                    "max_speed_kmh": kmh(episode["max"]),
                    "limit_kmh": kmh(episode["limit"]),
                    "duration_s": round(duration, 3),
                    "ended_at": iso(episode["last"]),
                },
            )
