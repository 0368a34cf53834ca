"""(6) GPS ingestion end to end vs raw COPY: placeholder for issue 5 (target >= 100,000 points/s and
>= 60% of the stage+merge COPY rate). Replace `placeholder` with None and give it a `run` that
returns the metrics below; `sides=(OURS,)` since the reference has no ingestion pipeline."""
from __future__ import annotations

from ..servers import OURS
from . import Metric, Scenario, Target, register

scenario = register(Scenario(
    key="gps_ingest",
    title="GPS ingestion: track documents -> rows, vs raw COPY",
    issue="5",
    sides=(OURS,),
    metrics=[
        Metric("points_per_s", "points materialized end to end", "points/s", "higher"),
        Metric("copy_points_per_s", "raw stage+merge COPY", "points/s", "higher"),
        Metric("pct_of_copy", "end to end as % of COPY", "%", "higher"),
    ],
    params={"full": {"reps": 3}, "smoke": {"reps": 1}},
    targets=[Target("points_per_s", ">= 100,000 points/s (issue 5)", at_least=100_000),
             Target("pct_of_copy", ">= 60% of the COPY rate (issue 5)", at_least=60)],
    placeholder="not measured yet: issue 5 (GPS tracking) fills this scenario",
))
