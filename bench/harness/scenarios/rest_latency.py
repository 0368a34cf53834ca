"""(7) REST latency: placeholder for issue 4 (p50/p95/p99 at 500 req/s for an authenticated list
and create; target p95 < 10 ms). Replace `placeholder` with None and give it a `run`."""
from __future__ import annotations

from ..servers import OURS
from . import Metric, Scenario, Target, register

scenario = register(Scenario(
    key="rest_latency",
    title="REST latency at 500 req/s: authenticated list and create",
    issue="4",
    sides=(OURS,),
    metrics=[
        Metric("list_p95_ms", "list p95", "ms"),
        Metric("create_p95_ms", "create p95", "ms"),
    ],
    params={"full": {"reps": 3}, "smoke": {"reps": 1}},
    targets=[Target("list_p95_ms", "list p95 < 10 ms (issue 4)", at_most=10),
             Target("create_p95_ms", "create p95 < 10 ms (issue 4)", at_most=10)],
    placeholder="not measured yet: issue 4 (REST) fills this scenario",
))
