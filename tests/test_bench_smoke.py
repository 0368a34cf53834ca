"""The benchmark harness still works end to end: `bench/run.py --smoke` (tiny counts, real reference
server, our server where the sync endpoint exists) writes a RESULTS file with every section.
No timing assertions: numbers belong to `make bench`, not to the test suite."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from harness.scenarios import load  # noqa: E402


def test_smoke_run_writes_every_section(tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--smoke",
            "--no-profile",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    for heading in ("# Benchmark results", "## Machine", "## Versions", "## Method", "## Targets"):
        assert heading in text
    assert "cores: " in text and "y-websocket 1.5.4" in text
    for scenario in load().values():
        assert scenario.title in text
        if scenario.placeholder:
            assert scenario.placeholder in text
    # The reference server really ran and relayed every update; no scenario crashed on either side.
    relay = text.split("### (1) Relay")[1].split("### (2)")[0]
    assert re.search(r"^\| 0 \| reference \| [\d,.]+ \| .* \| 0 \|$", relay, re.M), relay
    assert "**failed**" not in text, text
    # Ours is either measured or plainly marked as not available (before the sync endpoint lands).
    assert "| 0 | ours |" in relay or "- ours: **not available**" in relay


def test_gps_ingest_fails_at_once_with_the_stderr_of_a_client_that_died(tmp_path):
    """Tracker clients that die at start (here: node cannot load a module, as without node_modules)
    stop the benchmark at once with what they said, instead of waiting forever for their points."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gps_ingest.py")]
        + ["--vehicles", "1", "--points", "200", "--rounds", "1", "--geofences", "1"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, "NODE_OPTIONS": f"--require {tmp_path / 'missing-module.js'}"},
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "gps_ingest: a tracker client exited with 1 during warm-up" in proc.stderr, proc.stderr[-3000:]
    assert f"Cannot find module '{tmp_path / 'missing-module.js'}'" in proc.stderr
    assert "Traceback" not in proc.stderr
