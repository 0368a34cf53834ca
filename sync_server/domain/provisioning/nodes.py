"""The nodes serving the cluster, as the operator console lists them: every node whose Redis
heartbeat (extensions/fanout: `{prefix}node:{id}`) has not expired, with the open connections and
loaded rooms its last beat reported. A single node without Redis lists itself, counted now.
Redis unreachable: this node alone, marked `redis_unreachable` (the others cannot be known)."""

from __future__ import annotations

import asyncio
import time

import structlog

log = structlog.get_logger("sync_server.domain.provisioning.nodes")

REDIS_TIMEOUT = 3.0


def _local(rt) -> dict:
    try:
        rooms = rt.rooms.rooms()
    except (AttributeError, RuntimeError):  # a runtime without the sync core
        rooms = []
    return {"connections": sum(len(r.connections) for r in rooms), "rooms": len(rooms), "beat_at": time.time()}


def _row(node: str, state: dict, *, this: bool) -> dict:
    def count(name: str) -> int | None:
        value = state.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    def moment(name: str) -> float | None:
        value = state.get(name)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    return {
        "id": node,
        "this_node": this,
        "connections": count("connections"),
        "rooms": count("rooms"),
        "started_at": moment("started_at"),
        "beat_at": moment("beat_at"),
    }


async def list_nodes(rt) -> dict:
    """{"nodes": [...], "source": "redis" | "local" | "redis_unreachable"}."""
    fanout = getattr(rt, "fanout", None) if rt.redis is not None else None
    if fanout is None:
        return {"nodes": [_row(rt.settings.node_id or "this node", _local(rt), this=True)], "source": "local"}
    try:
        states = await asyncio.wait_for(fanout.node_states(), REDIS_TIMEOUT)
    except Exception as exc:  # Redis down or slow: say so, show what this node knows
        log.warning("node_list_without_redis", error=repr(exc))
        local = {**_local(rt), "started_at": fanout.started_at}
        return {"nodes": [_row(fanout.node, local, this=True)], "source": "redis_unreachable"}
    # this node counted now (also between its start and its first beat)
    states[fanout.node] = {**states.get(fanout.node, {}), **_local(rt), "started_at": fanout.started_at}
    nodes = [_row(n, s, this=n == fanout.node) for n, s in sorted(states.items())]
    return {"nodes": nodes, "source": "redis"}
