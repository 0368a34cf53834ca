"""(2) Fan-out: one writer, many observers in one room, paced updates."""

from __future__ import annotations

from ..delivery import deliver
from ..stats import percentile
from . import Metric, RunContext, Scenario, register


def run(ctx: RunContext, server, rep: int) -> dict[str, float]:
    p = scenario.counts(ctx.mode)
    d = deliver(
        server,
        ctx.log_dir,
        doc=f"fanout-{server.side}-{rep}",
        observers=p["observers"],
        processes=p["processes"],
        items=p["items"],
        rate=p["rate"],
        timeout=p["timeout"],
    )
    expected = d.items * p["observers"]
    return {
        "p50_ms": percentile(d.latencies_ms, 50) if d.latencies_ms else None,
        "p99_ms": percentile(d.latencies_ms, 99) if d.latencies_ms else None,
        "cpu_us_per_delivery": d.server_cpu_s * 1e6 / max(1, d.received),
        "db_cpu_us_per_delivery": None if d.db_cpu_s is None else d.db_cpu_s * 1e6 / max(1, d.received),
        "delivered_pct": 100.0 * d.received / expected,
        "observers_synced": d.observers,
    }


scenario = register(
    Scenario(
        key="fanout",
        title="Fan-out: 1 writer -> many observers in one room",
        issue="8",
        metrics=[
            Metric("p50_ms", "delivery latency p50", "ms"),
            Metric("p99_ms", "delivery latency p99", "ms"),
            Metric("cpu_us_per_delivery", "server CPU per update per observer", "µs"),
            Metric("db_cpu_us_per_delivery", "PostgreSQL CPU per update per observer", "µs", ""),
            Metric("delivered_pct", "delivered", "%", ""),
            Metric("observers_synced", "observers connected", "", ""),
        ],
        params={
            "full": {"observers": 1000, "processes": 4, "items": 100, "rate": 10, "reps": 3, "timeout": 180},
            "smoke": {"observers": 10, "processes": 2, "items": 10, "rate": 50, "reps": 1, "timeout": 30},
        },
        notes="Observers are spread over several Node processes on the same 2 cores as the server, so "
        "latency includes the observers' own turn to read; both servers face the same clients.",
        run=run,
    )
)
