"""Refusal storms (issue 15): what refused y-websocket clients cost the server, with refused sockets
closed at once (SYNC_REFUSAL_HOLD_SECONDS=0, the reference) and held (the default) in the same run.

    .venv/bin/python bench/refusal_storm.py versions [--seconds 30] [--hold 3]
    .venv/bin/python bench/refusal_storm.py fleet [--seconds 60] [--clients 2000] [--limit 50] [--hold 10]

`versions`: one client each of y-websocket 1.5.4, 2.1.0 and 3.1.0 with a bad token for `seconds`:
attempts per client, refusal log lines, server CPU. `fleet`: `clients` y-websocket 3.x providers
of one customer whose plan allows `limit` connections: server CPU (from /proc/<pid>/stat) over the
run's second half (when the refused ones only wait and retry), attempts, and whether the admitted
ones synced each other's writes. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import procstat  # noqa: E402
from harness.database import PLAN, BenchDatabase  # noqa: E402
from harness.servers import Ours  # noqa: E402

JS = ROOT / "client-examples" / "js"
LIBS = {"1.5.4": "y-websocket-v1", "2.1.0": "y-websocket-v2", "3.1.0": "y-websocket"}


def node(script: str, plan: dict) -> subprocess.Popen:
    return subprocess.Popen(["node", str(JS / script), json.dumps(plan)], cwd=JS, stdout=subprocess.PIPE, text=True)


def last_json(proc: subprocess.Popen, timeout: float) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    return json.loads([line for line in out.splitlines() if line.strip()][-1])


def versions(db: BenchDatabase, tmp: Path, seconds: float, hold: float) -> dict:
    server = Ours(tmp, db, {"SYNC_REFUSAL_HOLD_SECONDS": str(hold), "LOG_LEVEL": "info"})
    try:
        cpu0 = procstat.cpu_seconds(server.pid)
        procs = {
            v: node(
                "edge.mjs",
                {"lib": lib, "server": server.ws_base, "doc": "fleet", "token": "wst1.bad.token"}
                | {"seconds": seconds},
            )
            for v, lib in LIBS.items()
        }
        results = {v: last_json(p, seconds + 60) for v, p in procs.items()}
        cpu = procstat.cpu_seconds(server.pid) - cpu0
        upgraded: dict[str, dict] = {}
        upgrade_cpu = None
        if hold == 0:  # the same clients refused at the upgrade (a path with no websocket: HTTP 403/404)
            cpu1 = procstat.cpu_seconds(server.pid)
            upgrade = {
                v: node(
                    "edge.mjs",
                    {"lib": lib, "server": server.ws_base.replace("/sync/", "/no-sync/"), "doc": "fleet"}
                    | {"seconds": seconds},
                )
                for v, lib in LIBS.items()
            }
            upgraded = {v: last_json(p, seconds + 60) for v, p in upgrade.items()}
            upgrade_cpu = round(procstat.cpu_seconds(server.pid) - cpu1, 2)
        # over the plan's connections (1013): one holder takes the only slot, one client of each version
        asyncio.run(_set_limit(db.url, 1))
        holder = node(
            "edge.mjs", {"server": server.ws_base, "doc": "fleet", "token": server.token, "seconds": seconds + 5}
        )
        time.sleep(3)
        cpu2 = procstat.cpu_seconds(server.pid)
        over = {
            v: node(
                "edge.mjs",
                {"lib": lib, "server": server.ws_base, "doc": "fleet", "token": server.token} | {"seconds": seconds},
            )
            for v, lib in LIBS.items()
        }
        over_limit = {v: last_json(p, seconds + 60) for v, p in over.items()}
        over_cpu = round(procstat.cpu_seconds(server.pid) - cpu2, 2)
        last_json(holder, 60)
        asyncio.run(_set_limit(db.url, 1_000_000))
        log = server.process.log_text()
    finally:
        server.stop()
    return {
        "hold_s": hold,
        "seconds": seconds,
        "over_limit_attempts": {v: r["attempts"] for v, r in over_limit.items()},
        "over_limit_close_codes": sorted({c["code"] for r in over_limit.values() for c in r["closes"]}),
        "over_limit_server_cpu_s": over_cpu,
        "attempts": {v: r["attempts"] for v, r in results.items()},
        "stopped": {v: r["stopped"] for v, r in results.items()},
        "refused_at_upgrade_attempts": {v: r["attempts"] for v, r in upgraded.items()},
        "refused_at_upgrade_close_codes": sorted({c["code"] for r in upgraded.values() for c in r["closes"]}),
        "refused_at_upgrade_server_cpu_s": upgrade_cpu,
        "refused_log_lines": log.count('"sync_refused"'),
        "log_bytes": len(log),
        "server_cpu_s": round(cpu, 2),
    }


def fleet(db: BenchDatabase, tmp: Path, seconds: float, clients: int, limit: int, hold: float) -> dict:
    asyncio.run(_set_limit(db.url, limit))
    server = Ours(tmp, db, {"SYNC_REFUSAL_HOLD_SECONDS": str(hold), "SYNC_IDLE_TIMEOUT_SECONDS": "600"})
    try:
        start_cpu = procstat.cpu_seconds(server.pid)
        proc = node(
            "many.mjs",
            {"lib": "y-websocket", "server": server.ws_base, "doc": "fleet", "token": server.token}
            | {"clients": clients, "seconds": seconds, "rampMs": 5000},
        )
        time.sleep(seconds / 2)
        half_cpu, half_t = procstat.cpu_seconds(server.pid), time.monotonic()
        rss_mid = procstat.rss_bytes(server.pid)
        result = last_json(proc, seconds + 120)
        end_cpu, end_t = procstat.cpu_seconds(server.pid), time.monotonic()
    finally:
        server.stop()
    window = end_t - half_t
    return {
        "hold_s": hold,
        "clients": clients,
        "limit": limit,
        "seconds": seconds,
        "server_cpu_whole_run_s": round(end_cpu - start_cpu, 2),
        "server_cpu_second_half_share_of_a_core": round((end_cpu - half_cpu) / window, 3),
        "server_rss_mid_mib": round(rss_mid / 2**20, 1),
        "attempts": result["attempts"],
        "attempts_per_s": round(result["attempts"] / seconds, 1),
        "close_codes": result["close_codes"],
        "ever_synced": result["ever_synced"],
        "connected_at_end": result["connected_at_end"],
        "keys_seen_by_one_admitted": result["keys_seen"],
    }


async def _set_limit(url: str, limit: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE plans SET connection_limit = $2 WHERE id = $1", PLAN, limit)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=("versions", "fleet"))
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--hold", type=float, default=None, help="the held run's SYNC_REFUSAL_HOLD_SECONDS")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--only-held", action="store_true", help="skip the reference run (hold 0)")
    args = parser.parse_args()
    db = BenchDatabase().create()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for hold in ([] if args.only_held else [0.0]) + [
                args.hold if args.hold is not None else (3.0 if args.part == "versions" else 10.0)
            ]:
                if args.part == "versions":
                    out = versions(db, Path(tmp), args.seconds or 30, hold)
                else:
                    out = fleet(db, Path(tmp), args.seconds or 60, args.clients, args.limit, hold)
                print(json.dumps(out), flush=True)
    finally:
        db.drop()


if __name__ == "__main__":
    main()
