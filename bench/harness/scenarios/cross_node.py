"""Cross-node relay through Redis vs single node: placeholder for issue 7 (latency p50/p99 and
throughput). Replace `placeholder` with None and give it a `run`."""
from __future__ import annotations

from ..servers import OURS
from . import Metric, Scenario, register

scenario = register(Scenario(
    key="cross_node",
    title="Cross-node relay (two nodes, Redis) vs single node",
    issue="7",
    sides=(OURS,),
    metrics=[
        Metric("updates_per_s", "cross-node throughput", "updates/s", "higher"),
        Metric("p50_ms", "cross-node latency p50", "ms"),
        Metric("p99_ms", "cross-node latency p99", "ms"),
    ],
    params={"full": {"reps": 3}, "smoke": {"reps": 1}},
    placeholder="not measured yet: issue 7 (several nodes) fills this scenario",
))
