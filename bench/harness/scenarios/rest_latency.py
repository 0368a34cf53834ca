"""(7) REST latency (issue 4): runs bench/rest_latency.py (open loop at a fixed rate, latency from
each request's scheduled start) against a server it starts itself. Ours only."""

from __future__ import annotations

from ..scripts import profile_script, run_script
from ..servers import OURS
from . import Metric, RunContext, Scenario, Target, register

SCRIPT = "rest_latency.py"
LIST, CREATE = "list GET /api/v1/vehicles?limit=20", "create POST /api/v1/vehicles"


def _args(ctx: RunContext, seconds: float | None = None) -> list[str]:
    p = scenario.counts(ctx.mode)
    return [
        "--rate",
        str(p["rate"]),
        "--seconds",
        str(seconds or p["seconds"]),
        "--customers",
        str(p["customers"]),
        "--json",
    ]


def run(ctx: RunContext, server, rep: int) -> dict[str, float]:
    results = run_script(SCRIPT, _args(ctx), ctx.log_dir, timeout=scenario.counts(ctx.mode)["timeout"])["results"]
    metrics = {}
    for name, key in ((LIST, "list"), (CREATE, "create")):
        r = results[name]
        metrics.update(
            {
                f"{key}_p50_ms": r["p50_ms"],
                f"{key}_p95_ms": r["p95_ms"],
                f"{key}_p99_ms": r["p99_ms"],
                f"{key}_rate": r["achieved_rate"],
                f"{key}_errors": sum(n for status, n in r["statuses"].items() if not str(status).startswith("2")),
                f"{key}_cpu_ms": r.get("server_cpu_ms_per_req"),
            }
        )
    return metrics


def profile(ctx: RunContext) -> str:
    return profile_script(SCRIPT, _args(ctx, seconds=3), ctx.log_dir)


scenario = register(
    Scenario(
        key="rest_latency",
        title="REST latency at 500 req/s: authenticated list and create",
        issue="4",
        sides=(OURS,),
        self_hosted=True,
        metrics=[
            Metric("list_p50_ms", "list p50", "ms"),
            Metric("list_p95_ms", "list p95", "ms"),
            Metric("list_p99_ms", "list p99", "ms"),
            Metric("create_p50_ms", "create p50", "ms"),
            Metric("create_p95_ms", "create p95", "ms"),
            Metric("create_p99_ms", "create p99", "ms"),
            Metric("list_rate", "list rate achieved", "req/s", ""),
            Metric("create_rate", "create rate achieved", "req/s", ""),
            Metric("list_errors", "list non-2xx responses", "", ""),
            Metric("create_errors", "create non-2xx responses", "", ""),
            Metric("list_cpu_ms", "server CPU per list", "ms", ""),
            Metric("create_cpu_ms", "server CPU per create", "ms", ""),
        ],
        params={
            "full": {"rate": 500, "seconds": 5, "customers": 5, "reps": 2, "timeout": 180},
            "smoke": {"rate": 50, "seconds": 0.5, "customers": 1, "reps": 1, "timeout": 120},
        },
        targets=[
            Target("list_p95_ms", "list p95 < 10 ms at 500 req/s (issue 4)", at_most=10),
            Target("create_p95_ms", "create p95 < 10 ms at 500 req/s (issue 4)", at_most=10),
        ],
        notes="Runs bench/rest_latency.py: a fresh database and `webhost-sync serve`, an operator, customers on "
        "an unlimited plan (API keys), then an open-loop keep-alive HTTP/1.1 client sends the rate for the "
        "given seconds per request kind; latency counts from each request's scheduled start, so queueing "
        "shows. Requests go round-robin over the customers' API keys.",
        run=run,
        profile=profile,
    )
)
