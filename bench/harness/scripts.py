"""Scenarios measured by a standalone bench script (bench/gps_ingest.py, bench/rest_latency.py,
bench/cross_node.py): the script starts its own server(s) and database, so the harness runs it as a
separate process with the scenario's counts and reads the JSON summary it prints as its last line.
Its py-spy profile samples the script and every process it starts (our servers among them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .clients import BENCH

ROOT = BENCH.parent


def _argv(script: str, args: list[str]) -> list[str]:
    return [sys.executable, str(BENCH / script), *args]


def run_script(script: str, args: list[str], log_dir: Path, timeout: float) -> dict:
    """Run bench/<script> with `args`; its output goes to a log file; returns its last stdout line as JSON."""
    log = log_dir / f"{Path(script).stem}.{time.strftime('%H%M%S')}.log"
    with open(log, "wb") as err:
        proc = subprocess.run(_argv(script, args), stdout=subprocess.PIPE, stderr=err, cwd=ROOT, timeout=timeout)
    out = proc.stdout.decode(errors="replace")
    with open(log, "ab") as f:
        f.write(proc.stdout)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-400:]
        raise RuntimeError(f"{script} exited with {proc.returncode} (log {log}): {tail}")
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"{script} printed nothing (log {log})")
    return json.loads(lines[-1])


def ensure_npm(folder: Path) -> None:
    """`npm ci` in a client folder a script needs (make bench does it too; a bare run.py may not have)."""
    if (folder / "package-lock.json").exists() and not (folder / "node_modules").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder, check=True, timeout=300
        )


def profile_script(script: str, args: list[str], log_dir: Path, seconds: float = 90.0) -> str:
    """The script once more under `py-spy record --subprocesses`; summarized as top frames."""
    from .profiling import _py_spy, summarize

    spy = _py_spy()
    if spy is None:
        return "profile unavailable: py-spy could not be installed"
    out = log_dir / f"profile-{Path(script).stem}.txt"
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "--subprocesses",
            "--format",
            "raw",
            "--rate",
            "250",
            "--nonblocking",
            "--output",
            str(out),
            "--",
            *_argv(script, args),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    note = ""
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        note = f"(recording cut after {seconds:.0f}s)\n"
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    if not out.exists():
        return note + "py-spy wrote no profile"
    # --subprocesses puts `process PID:"cmdline"` first on every stack: keep our server's samples only
    served = []
    for line in out.read_text(errors="replace").splitlines():
        frames = line.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        if procs and "webhost-sync serve" in procs[-1]:
            served.append(";".join(frames[len(procs) :]))
    return note + "py-spy on our server(s) while the script ran (setup included)\n" + summarize("\n".join(served))
