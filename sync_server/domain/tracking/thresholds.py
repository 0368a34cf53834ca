"""Per-customer thresholds of the fleet events (tracking_settings.settings; REST:
GET/PUT /api/v1/tracking/event-settings). Missing keys take these defaults. A vehicle's own speed
limit is `metadata.speed_limit_kmh` of the vehicle, a zone's that of a geofence's metadata; the
limit at a fix is the lowest that applies. Changed thresholds apply to fixes analysed from then on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    stop_radius_m: float = 100.0  # a stop: the vehicle stays within this distance of where it stopped...
    stop_speed_kmh: float = 5.0  # ...no fix faster than this...
    min_stop_s: float = 300.0  # ...for at least this long; leaving the radius starts a trip
    speed_limit_kmh: float | None = None  # the customer's default limit (None: only vehicle/zone limits)
    overspeed_min_s: float = 15.0  # an episode over the limit counts from this duration on
    offline_after_s: float = 600.0  # no fix for this long: device.offline

    @classmethod
    def of(cls, settings: dict[str, Any] | None) -> Thresholds:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (settings or {}).items() if k in known})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULTS = Thresholds()


def speed_limit(value: Any) -> float | None:
    """A limit in km/h from metadata (a positive finite number), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 < value < 1e4 else None
