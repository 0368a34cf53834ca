"""(1) Relay: one writer, one reader, small updates sent as fast as the writer's socket takes them."""

from __future__ import annotations

from ..delivery import deliver
from ..stats import percentile
from . import Metric, RunContext, Scenario, Target, register


def run(ctx: RunContext, server, rep: int) -> dict[str, float]:
    p = scenario.counts(ctx.mode)
    d = deliver(
        server,
        ctx.log_dir,
        doc=f"relay-{server.side}-{rep}",
        observers=1,
        processes=1,
        items=p["items"],
        rate=0,
        timeout=p["timeout"],
    )
    paced = deliver(
        server,
        ctx.log_dir,
        doc=f"relay-paced-{server.side}-{rep}",
        observers=1,
        processes=1,
        items=p["paced_items"],
        rate=p["paced_rate"],
        timeout=p["timeout"],
    )
    return {
        "updates_per_s": d.received / d.seconds if d.seconds else 0.0,
        "paced_p50_ms": percentile(paced.latencies_ms, 50) if paced.latencies_ms else None,
        "paced_p99_ms": percentile(paced.latencies_ms, 99) if paced.latencies_ms else None,
        "p50_ms": percentile(d.latencies_ms, 50) if d.latencies_ms else None,
        "p99_ms": percentile(d.latencies_ms, 99) if d.latencies_ms else None,
        "cpu_us_per_update": d.server_cpu_s * 1e6 / max(1, d.received),
        "db_cpu_us_per_update": None if d.db_cpu_s is None else d.db_cpu_s * 1e6 / max(1, d.received),
        "lost": d.items - d.received + paced.items - paced.received,
    }


scenario = register(
    Scenario(
        key="relay",
        title="Relay: 1 writer -> 1 reader, small updates",
        issue="3",
        metrics=[
            Metric("updates_per_s", "throughput", "updates/s", "higher"),
            Metric("paced_p50_ms", "latency p50 (paced)", "ms"),
            Metric("paced_p99_ms", "latency p99 (paced)", "ms"),
            Metric("p50_ms", "latency p50 (under flood)", "ms"),
            Metric("p99_ms", "latency p99 (under flood)", "ms"),
            Metric("cpu_us_per_update", "server CPU per update", "µs"),
            Metric("db_cpu_us_per_update", "PostgreSQL CPU per update", "µs", ""),
            Metric("lost", "updates not delivered", "", ""),
        ],
        params={
            "full": {"items": 10_000, "paced_items": 1_000, "paced_rate": 500, "reps": 3, "timeout": 180},
            "smoke": {"items": 200, "paced_items": 20, "paced_rate": 200, "reps": 1, "timeout": 30},
        },
        targets=[Target("updates_per_s", ">= 1.0x the reference's updates/s (issue 3)", ratio=1.0)],
        notes="The writer prepares its Yjs updates (one Y.Array push each) before joining, then sends them "
        "as fast as its socket takes them; throughput = delivered / (first send -> last arrival), so "
        "flood latency includes queueing behind the burst. A second, paced pass (paced_items at paced_rate/s, "
        "new room) gives the latency of a single update.",
        run=run,
    )
)
