"""(5) Cold load: a document that exists only as a long update log in PostgreSQL (no snapshot),
opened by one client; time from connect to synced with every entry. Ours only: the reference
server keeps nothing on disk, so it has no cold load to compare."""

from __future__ import annotations

import time

from .. import procstat
from ..clients import JsClient, stop_all
from ..servers import OURS
from . import Metric, RunContext, Scenario, register


def logged_updates(count: int) -> list[bytes]:
    """`count` real Yjs updates, one Y.Array push of {i} each, made with pycrdt."""
    from tests.support.sync_peers import array_pushes

    return array_pushes(count)


def run(ctx: RunContext, server, rep: int) -> dict[str, float]:
    p = scenario.counts(ctx.mode)
    key = ("cold_load_updates", p["updates"])
    if key not in ctx.cache:
        ctx.cache[key] = logged_updates(p["updates"])
    updates = ctx.cache[key]
    doc = f"cold-{rep}"
    ctx.database.insert_updates(doc, updates)
    joiner = JsClient(
        "join.js",
        ctx.log_dir,
        server=server.ws_base,
        doc=doc,
        token=server.token,
        clients=1,
        items=len(updates),
        timeout=p["timeout"],
    )
    try:
        joiner.wait("ready", 60)
        rss0 = procstat.rss_bytes(server.pid)
        cpu0, db0 = server.cpu_seconds()
        joiner.say("go")
        done = joiner.wait("done", p["timeout"] + 60)
        cpu1, db1 = server.cpu_seconds()  # includes the compaction that follows the load, if it ran by then
        time.sleep(2)  # the compaction due at load has run (LOAD_COMPACTION_DELAY), the peer has left
        rss1 = procstat.rss_bytes(server.pid)
    finally:
        stop_all([joiner])
    if done["error_count"]:
        raise RuntimeError(f"cold load failed: {done['errors']}")
    return {
        "first_sync_s": (done["synced"][0] - done["t0"]) / 1000,
        "updates_per_s": len(updates) / ((done["synced"][0] - done["t0"]) / 1000),
        "log_mib": sum(map(len, updates)) / 2**20,
        "server_cpu_ms": (cpu1 - cpu0) * 1000,
        "room_rss_mib": (rss1 - rss0) / 2**20,
        **({"postgres_cpu_ms": (db1 - db0) * 1000} if db0 is not None and db1 is not None else {}),
    }


scenario = register(
    Scenario(
        key="cold_load",
        title="Cold load: a document of many logged updates, time to first sync",
        issue="3",
        sides=(OURS,),
        metrics=[
            Metric("first_sync_s", "time to first sync", "s"),
            Metric("updates_per_s", "log replay rate", "updates/s", "higher"),
            Metric("log_mib", "update log size", "MiB", ""),
            Metric("server_cpu_ms", "server CPU, connect to synced", "ms"),
            Metric("postgres_cpu_ms", "PostgreSQL CPU, connect to synced", "ms"),
            Metric("room_rss_mib", "server RSS grown by the loaded room (2 s after synced)", "MiB"),
        ],
        params={
            "full": {"updates": 100_000, "reps": 3, "timeout": 120},
            "smoke": {"updates": 500, "reps": 1, "timeout": 60},
        },
        notes="Setup writes the rows straight into doc_updates (COPY), one document per repetition, so every "
        "load is cold. The reference server has no persistence: n/a.",
        run=run,
    )
)
