"""Cross-node relay through Redis vs single node (issue 7): runs bench/cross_node.py (two real
`webhost-sync serve` nodes on one database and Redis; latency one update at a time, then
throughput of updates sent back to back). Ours only."""

from __future__ import annotations

from ..scripts import run_script
from ..servers import OURS
from . import Metric, RunContext, Scenario, register

SCRIPT = "cross_node.py"


def run(ctx: RunContext, server, rep: int) -> dict[str, float]:
    p = scenario.counts(ctx.mode)
    r = run_script(
        SCRIPT, ["--pings", str(p["pings"]), "--updates", str(p["updates"])], ctx.log_dir, timeout=p["timeout"]
    )
    cross, single = r["cross_node"], r["single_node"]
    return {
        "p50_ms": cross["p50_ms"],
        "p99_ms": cross["p99_ms"],
        "updates_per_s": cross["updates_per_s"],
        "single_p50_ms": single["p50_ms"],
        "single_p99_ms": single["p99_ms"],
        "single_updates_per_s": single["updates_per_s"],
        "throughput_pct_of_single": round(100 * cross["updates_per_s"] / single["updates_per_s"], 1),
    }


scenario = register(
    Scenario(
        key="cross_node",
        title="Cross-node relay (two nodes, Redis) vs single node",
        issue="7",
        sides=(OURS,),
        self_hosted=True,
        metrics=[
            Metric("p50_ms", "cross-node latency p50", "ms"),
            Metric("p99_ms", "cross-node latency p99", "ms"),
            Metric("updates_per_s", "cross-node throughput", "updates/s", "higher"),
            Metric("single_p50_ms", "single-node latency p50", "ms"),
            Metric("single_p99_ms", "single-node latency p99", "ms"),
            Metric("single_updates_per_s", "single-node throughput", "updates/s", "higher"),
            Metric("throughput_pct_of_single", "cross-node throughput as % of single node", "%", "higher"),
        ],
        params={
            "full": {"pings": 300, "updates": 1000, "reps": 2, "timeout": 240},
            "smoke": {"pings": 20, "updates": 50, "reps": 1, "timeout": 120},
        },
        notes="Runs bench/cross_node.py: sender on node A, receiver on node B (cross) vs both on node A "
        "(single), raw y-websocket peers in one process (one clock). Issue 7 states no numeric target: "
        "the numbers are reported beside the single-node ones.",
        run=run,
    )
)
