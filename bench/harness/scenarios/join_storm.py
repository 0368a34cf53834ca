"""(4) Join storm: many clients open a large, hot document at the same instant."""

from __future__ import annotations

from .. import procstat
from ..clients import JsClient, shares, stop_all
from ..stats import median
from . import Metric, RunContext, Scenario, register


def run(ctx: RunContext, server, rep: int) -> dict[str, float]:
    p = scenario.counts(ctx.mode)
    doc = f"storm-{server.side}-{rep}"
    clients: list[JsClient] = []
    try:
        seeder = JsClient(
            "write.js",
            ctx.log_dir,
            server=server.ws_base,
            doc=doc,
            token=server.token,
            items=p["blobs"],
            blob_bytes=p["blob_bytes"],
            verify=1,
            timeout=p["timeout"],
        )
        clients.append(seeder)
        seeded = seeder.wait("done", p["timeout"] + 30)
        if not seeded["verified"]:
            raise RuntimeError("the seeded document never showed every entry to a new peer")
        joiners = [
            JsClient(
                "join.js",
                ctx.log_dir,
                server=server.ws_base,
                doc=doc,
                token=server.token,
                clients=n,
                items=p["blobs"],
                timeout=p["timeout"],
            )
            for n in shares(p["clients"], p["processes"])
        ]
        clients += joiners
        for j in joiners:
            j.wait("ready", 60)
        rss0 = procstat.rss_bytes(server.pid)
        cpu0 = procstat.cpu_seconds(server.pid)
        for j in joiners:
            j.say("go")
        results = [j.wait("done", p["timeout"] + 60) for j in joiners]
        cpu1 = procstat.cpu_seconds(server.pid)
        rss1 = procstat.rss_bytes(server.pid)
    finally:
        stop_all(clients)
    t0 = min(r["t0"] for r in results)
    synced = [t for r in results for t in r["synced"]]
    errors = sum(r["error_count"] for r in results)
    return {
        "all_synced_s": (max(synced) - t0) / 1000 if synced and not errors else None,
        "median_join_s": (median(synced) - t0) / 1000 if synced else None,
        "server_cpu_s": cpu1 - cpu0,
        "rss_growth_mib": (rss1 - rss0) / 2**20,
        "doc_mib": seeded["bytes"] / 2**20,
        "failed_joins": errors,
    }


scenario = register(
    Scenario(
        key="join_storm",
        title="Join storm: many clients join a large document at once",
        issue="8",
        metrics=[
            Metric("all_synced_s", "time until every client is synced", "s"),
            Metric("median_join_s", "median time to synced", "s"),
            Metric("server_cpu_s", "server CPU for the storm", "s"),
            Metric("rss_growth_mib", "server RSS growth during the storm", "MiB"),
            Metric("doc_mib", "document size (encoded state)", "MiB", ""),
            Metric("failed_joins", "joins that failed", "", ""),
        ],
        params={
            "full": {"clients": 200, "processes": 4, "blobs": 512, "blob_bytes": 10_240, "reps": 3, "timeout": 240},
            "smoke": {"clients": 6, "processes": 2, "blobs": 20, "blob_bytes": 1024, "reps": 1, "timeout": 30},
        },
        notes="The document is written by one client as many binary entries (one update each; 10 KiB in the full run) and stays "
        "loaded (the writer stays connected). The joiners start together on a 'go' line; a joiner counts as "
        "synced when its Y.Array holds every entry.",
        run=run,
    )
)
