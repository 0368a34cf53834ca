"""`make bench`: run every registered scenario against our server and the Node reference server
(alternating A/B in one run) and write bench/RESULTS.md.

    .venv/bin/python bench/run.py                 # the full run (about 10-15 minutes on 2 cores)
    .venv/bin/python bench/run.py --smoke --out /tmp/R.md   # tiny counts: checks the harness works
    .venv/bin/python bench/run.py --only relay,fanout --sides reference
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from harness import procstat, profiling  # noqa: E402
from harness.clients import ClientFailed, JsClient, stop_all  # noqa: E402
from harness.database import BenchDatabase  # noqa: E402
from harness.report import SideResult, render  # noqa: E402
from harness.scenarios import RunContext, Scenario, load  # noqa: E402
from harness.servers import OURS, REFERENCE, Server, Unavailable, start  # noqa: E402
from harness.watchdog import MemoryGuard  # noqa: E402


class Unguarded:
    """Stands in for a MemoryGuard when the scenario runs its own servers."""

    fired = None


def ensure_node_modules() -> None:
    if not (BENCH / "node_modules" / "y-websocket" / "bin" / "server.js").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=BENCH, check=True, timeout=300)


def probe(server: Server, log_dir: Path) -> None:
    """One peer joins one room: tells "the sync endpoint is not there (yet)" apart from a scenario failure."""
    client = JsClient(
        "join.js", log_dir, server=server.ws_base, doc="probe", token=server.token, clients=1, items=0, timeout=15
    )
    try:
        client.wait("ready", 30)
        client.say("go")
        done = client.wait("done", 60)
    except ClientFailed as exc:
        raise Unavailable(f"probe client failed: {exc}") from None
    finally:
        stop_all([client])
    if done["error_count"]:
        raise Unavailable(f"sync endpoint not available: {done['errors'][0]}")


def versions(database: BenchDatabase | None) -> dict[str, str]:
    def py(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    def npm(name: str) -> str:
        try:
            return json.loads((BENCH / "node_modules" / name / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            return "not installed"

    def cmd(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    dirty = " (uncommitted changes)" if cmd("git", "status", "--porcelain", "--untracked-files=no") else ""
    found = {
        "webhost-sync (ours)": f"{py('webhost-sync')}, git {cmd('git', 'rev-parse', '--short', 'HEAD')}{dirty}",
        "Python": platform.python_version(),
        "pycrdt / quart / hypercorn / asyncpg": " / ".join(py(n) for n in ("pycrdt", "quart", "hypercorn", "asyncpg")),
        "Node": cmd("node", "--version"),
        "reference server": f"y-websocket {npm('y-websocket')} bin/server.js (npm), yjs {npm('yjs')}, ws {npm('ws')}",
        "load clients": f"yjs {npm('yjs')}, y-protocols {npm('y-protocols')}, ws {npm('ws')}",
    }
    if database is not None:
        try:
            found["PostgreSQL"] = database.server_version()
        except Exception as exc:  # the version line must not sink the report
            found["PostgreSQL"] = f"? ({exc})"
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny counts, one repetition (harness check)")
    parser.add_argument("--only", default="", help="comma-separated scenario keys")
    parser.add_argument("--sides", default=f"{OURS},{REFERENCE}", help="which servers to measure")
    parser.add_argument("--reps", type=int, default=0, help="override the repetitions of every scenario")
    parser.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument("--work", type=Path, default=None, help="logs folder (default bench/.work/<time>)")
    parser.add_argument(
        "--budget", type=float, default=0, help="seconds; runs past it are skipped (default 840 full, 120 smoke)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy profiles of missed targets")
    args = parser.parse_args()

    mode = "smoke" if args.smoke else "full"
    budget = args.budget or (120 if args.smoke else 840)
    sides = [s for s in args.sides.split(",") if s]
    started_wall = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    log_dir = args.work or BENCH / ".work" / started_wall.strftime("%Y%m%dT%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    ensure_node_modules()
    machine = procstat.machine()

    registry = load()
    chosen = [k for k in args.only.split(",") if k] or list(registry)
    unknown = [k for k in chosen if k not in registry]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(registry)}")
    scenarios: list[Scenario] = [registry[k] for k in chosen]

    database: BenchDatabase | None = None
    ours_unavailable = ""
    if OURS in sides:
        try:
            database = BenchDatabase().create()
        except Exception as exc:
            ours_unavailable = f"bench database could not be prepared: {exc}"
    ctx = RunContext(mode=mode, log_dir=log_dir, database=database)
    results: dict[str, dict[str, SideResult]] = {}
    profiles: dict[str, str] = {}
    probed = False
    try:
        for scenario in scenarios:
            per_side = results.setdefault(scenario.key, {})
            if scenario.placeholder:
                continue
            reps = args.reps or scenario.counts(mode)["reps"]
            active = [s for s in sides if s in scenario.sides]
            for rep in range(reps):
                order = active if rep % 2 == 0 else active[::-1]
                for side in order:
                    result = per_side.setdefault(side, SideResult())
                    if result.status not in ("ok",):
                        continue  # not available / failed once: don't spend the budget again
                    if side == OURS and ours_unavailable:
                        result.status, result.reason = "not available", ours_unavailable
                        continue
                    if time.monotonic() - started > budget:
                        result.status = "skipped" if not result.runs else "ok"
                        result.reason = f"time budget of {budget:.0f}s spent"
                        continue
                    print(f"[bench] {scenario.key} rep {rep} {side}", flush=True)
                    server = None
                    t0 = time.monotonic()
                    try:
                        if not scenario.self_hosted:
                            server = start(side, log_dir, database)
                            print(f"[bench]   server up in {time.monotonic() - t0:.1f}s", flush=True)
                        if side == OURS and not probed and server is not None:
                            probe(server, log_dir)
                            probed = True
                        t0 = time.monotonic()
                        with MemoryGuard(server.pid) if server else contextlib.nullcontext(Unguarded) as guard:
                            try:
                                metrics = scenario.run(ctx, server, rep)
                            except Exception:
                                if guard.fired:
                                    raise RuntimeError(guard.fired) from None
                                raise
                        if guard.fired:
                            raise RuntimeError(guard.fired)
                        print(f"[bench]   {time.monotonic() - t0:.1f}s {metrics}", flush=True)
                        result.runs.append(metrics)
                        result.reps.append(rep)
                    except Unavailable as exc:
                        result.status, result.reason = "not available", str(exc)
                        if side == OURS:
                            ours_unavailable = str(exc)
                    except Exception as exc:
                        result.status, result.reason = "failed", f"{type(exc).__name__}: {str(exc)[:400]}"
                        traceback.print_exc()
                    finally:
                        if server is not None:
                            t0 = time.monotonic()
                            server.stop()
                            print(f"[bench]   server stopped in {time.monotonic() - t0:.1f}s", flush=True)
            if (
                not args.no_profile
                and mode == "full"
                and OURS in per_side
                and profiling.missed_target(scenario, per_side)
                and (scenario.profile or not scenario.self_hosted)
                and time.monotonic() - started < budget
            ):
                try:
                    profiles[scenario.key] = (
                        scenario.profile(ctx)
                        if scenario.profile
                        else profiling.profile(scenario, ctx, log_dir, database)
                    )
                except Exception as exc:  # a profile must not sink the report
                    profiles[scenario.key] = f"profile failed: {type(exc).__name__}: {str(exc)[:400]}"
    finally:
        if database is not None:
            database.drop()

    elapsed = time.monotonic() - started
    scaling = (
        "as the issues state (relay 10k updates; fan-out 1,000 observers; idle 10,000 clients over "
        "1,000 rooms; join storm 200 clients on a 5 MiB document; cold load 100k logged updates), "
        "with fewer repetitions where the 15-minute budget needs it (see each scenario). Scaled "
        "down to keep the whole run within 15 minutes on 2 cores: GPS ingestion 4 vehicles x "
        "25,000 points (the script's default is 50,000), REST latency 5 s per measurement at "
        "500 req/s (default 10 s), cross-node 300 pings and 1,000 updates (default 500 / 2,000)."
        if mode == "full"
        else "smoke counts (tiny)."
    )
    text = render(
        header={
            "date": started_wall.strftime("%Y-%m-%d %H:%M UTC"),
            "duration": f"{elapsed / 60:.1f} min",
            "scaling": scaling,
        },
        machine={**machine, "load average at end": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())},
        versions=versions(database),
        scenarios=scenarios,
        results=results,
        mode=mode,
        profiles=profiles,
    )
    args.out.write_text(text)
    print(f"[bench] wrote {args.out} in {elapsed:.0f}s (logs in {log_dir})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
