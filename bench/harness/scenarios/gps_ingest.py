"""(6) GPS ingestion end to end vs raw COPY (issue 5): runs bench/gps_ingest.py (real JS tracker
clients -> our server -> rows, against storage.positions.stage_and_merge alone in the same run).
Ours only: the reference has no ingestion pipeline."""

from __future__ import annotations

from ..clients import BENCH
from ..scripts import ensure_npm, run_script
from ..servers import OURS
from . import Metric, RunContext, Scenario, Target, register

SCRIPT = "gps_ingest.py"


def _args(ctx: RunContext, **extra) -> list[str]:
    p = scenario.counts(ctx.mode)
    args = [
        "--vehicles",
        str(p["vehicles"]),
        "--points",
        str(p["points"]),
        "--geofences",
        str(p["geofences"]),
        "--rounds",
        "1",
    ]
    return args + [a for k, v in extra.items() for a in (f"--{k}", str(v))]


def run(ctx: RunContext, server, rep: int) -> dict[str, float]:
    ensure_npm(BENCH.parent / "client-examples" / "js")
    r = run_script(SCRIPT, _args(ctx), ctx.log_dir, timeout=scenario.counts(ctx.mode)["timeout"])["rounds"][0]
    return {
        "points_per_s": r["points_per_s"],
        "copy_points_per_s": r["raw_copy"]["points_per_s"],
        "pct_of_copy": round(100 * r["ratio_to_copy"], 1),
        "projected_points_per_s": r["projected_points_per_s"],
        "projected_pct_of_copy": round(100 * r["projected_ratio_to_copy"], 1),
        "server_cpu_us_per_point": r["server_cpu_us_per_point"],
        "pg_cpu_us_per_point": r["pg_cpu_us_per_point"],
        "geofence_events": r["geofence_events"],
        "dashboard_rtt_p99_ms": r["dashboard_rtt_ms"].get("p99", 0.0),
    }


def profile(ctx: RunContext) -> str:
    """The script's own --profile: py-spy on the server during the measured phase only."""
    from ..profiling import _py_spy, summarize

    if _py_spy() is None:  # installs it into the venv on first need; the script expects it there
        return "profile unavailable: py-spy could not be installed"
    out = ctx.log_dir / "profile-gps_ingest.raw"
    run_script(SCRIPT, _args(ctx, profile=out), ctx.log_dir, timeout=scenario.counts(ctx.mode)["timeout"])
    if not out.exists():
        return "py-spy wrote no profile"
    return "py-spy on our server during the end-to-end phase\n" + summarize(out.read_text(errors="replace"))


scenario = register(
    Scenario(
        key="gps_ingest",
        title="GPS ingestion: track documents -> rows, vs raw COPY",
        issue="5",
        sides=(OURS,),
        self_hosted=True,
        metrics=[
            Metric("points_per_s", "points materialized end to end", "points/s", "higher"),
            Metric("copy_points_per_s", "raw stage+merge COPY", "points/s", "higher"),
            Metric("pct_of_copy", "end to end as % of COPY", "%", "higher"),
            Metric("projected_points_per_s", "CPU-projected end to end (points / max(server, PG CPU))", "points/s", ""),
            Metric("projected_pct_of_copy", "CPU-projected end to end as % of CPU-projected COPY", "%", ""),
            Metric("server_cpu_us_per_point", "server CPU per point", "us", ""),
            Metric("pg_cpu_us_per_point", "PostgreSQL CPU per point", "us", ""),
            Metric("geofence_events", "geofence events written", "", ""),
            Metric(
                "dashboard_rtt_p99_ms", "p99 sync round trip of a dashboard in another room meanwhile", "ms", "lower"
            ),
        ],
        params={
            "full": {"vehicles": 4, "points": 25_000, "geofences": 20, "reps": 2, "timeout": 300},
            "smoke": {"vehicles": 1, "points": 300, "geofences": 2, "reps": 1, "timeout": 120},
        },
        targets=[
            Target("points_per_s", ">= 100,000 points/s (issue 5)", at_least=100_000),
            Target("pct_of_copy", ">= 60% of the COPY rate (issue 5)", at_least=60),
        ],
        notes="Runs bench/gps_ingest.py (notes and earlier numbers in bench/gps_ingest.md): vehicles x points "
        "fixes recorded offline by real JS tracker clients, connected at once to a fresh `webhost-sync "
        "serve`, timed until every point is a row; against the same rows through stage+merge COPY alone "
        "on the same PostgreSQL in the same run. Wall-clock rates on the busy shared machine swing 2x; "
        "the CPU-projected rate is what an otherwise idle 2-core machine would give.",
        run=run,
        profile=profile,
    )
)
