"""device.offline / device.online: no fix for `offline_after_s`.

The rule on the fix stream: between consecutive fixes more than `offline_after_s` apart the device
was offline from (previous fix + offline_after_s) until the next fix (device.online). Fixes that
arrive later and fall into a gap split or remove it, as a run over the fixes in time order would.
The open gap after the last fix is decided on server time (`tail`), by the runtime task
(fleet_events.offline_loop) and by every batch that recomputes through the vehicle's last fix."""

from __future__ import annotations

from sync_server.domain.tracking.analysis import Fix, Output, iso
from sync_server.domain.tracking.thresholds import Thresholds

OFFLINE = "device.offline"
ONLINE = "device.online"


def step(state: dict, fix: Fix, prev: Fix | None, th: Thresholds, out: Output) -> None:
    if prev is None:
        return
    after = int(th.offline_after_s * 1000)
    if fix.ms - prev.ms > after:
        out.event(OFFLINE, prev.ms + after, prev.lat, prev.lng, {"last_fix_at": iso(prev.ms)})
        out.event(ONLINE, fix.ms, fix.lat, fix.lng, {"offline_s": round((fix.ms - prev.ms - after) / 1000, 3)})


def tail(last: Fix | None, now_ms: int, th: Thresholds) -> tuple[int, float, float, dict] | None:
    """The open gap's device.offline (time, lat, lng, data) when the server clock says so."""
    if last is None:
        return None
    after = int(th.offline_after_s * 1000)
    if now_ms - last.ms <= after:
        return None
    return last.ms + after, last.lat, last.lng, {"last_fix_at": iso(last.ms)}
