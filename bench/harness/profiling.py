"""Where our server's time goes in a scenario that missed its target: one extra run of ours under
py-spy (sampling, from outside the process), summarized as the top frames by own and total time."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from .report import target_verdict
from .servers import OURS, Unavailable, start
from .watchdog import MemoryGuard

_LINE = re.compile(r":\d+\)$")
# The event loop's own frames sit under every sample; they say nothing about where time goes.
_ROOTS = re.compile(
    r"^(<module>|main|cmd_serve|run|Runner\.run|BaseEventLoop\.(run_until_complete|run_forever|"
    r"_run_once)|Handle\._run) \("
)


def missed_target(scenario, results) -> bool:
    """Our side failed the scenario, or measured it and missed a target."""
    ours = results.get(OURS)
    if ours is not None and ours.status == "failed":
        return True
    if ours is None or ours.status != "ok" or not ours.runs:
        return False
    return any("NOT MET" in target_verdict(scenario, t, results)[1] for t in scenario.targets)


def _py_spy() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], timeout=180, capture_output=True)
    return str(exe) if exe.exists() else shutil.which("py-spy")


def summarize(raw: str, top: int = 15) -> str:
    own: Counter = Counter()
    total: Counter = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    if not samples:
        return "no samples"
    lines = [f"{samples} samples", "", "own time:"]
    lines += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "total time (frame on the stack):"]
    inner = [(frame, n) for frame, n in total.most_common() if not _ROOTS.match(frame)][:top]
    lines += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in inner]
    return "\n".join(lines)


def profile(scenario, ctx, log_dir: Path, database, seconds: float = 45.0) -> str:
    """Run the scenario once more on a fresh server of ours under py-spy; after `seconds` the
    recording ends and the server is killed (a stuck run must not eat the budget)."""
    spy = _py_spy()
    if spy is None:
        return "profile unavailable: py-spy could not be installed"
    try:
        server = start(OURS, log_dir, database)
    except Unavailable as exc:
        return f"profile unavailable: {exc}"
    out = log_dir / f"profile-{scenario.key}.txt"
    recorder = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(server.pid),
            "--format",
            "raw",
            "--rate",
            "250",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lock = threading.Lock()
    cut = []

    def finish_recording() -> None:
        with lock:
            if recorder.poll() is None:
                recorder.send_signal(signal.SIGINT)
                try:
                    recorder.wait(30)
                except subprocess.TimeoutExpired:
                    recorder.kill()

    def cut_short() -> None:
        cut.append(True)
        finish_recording()
        try:
            os.kill(server.pid, signal.SIGKILL)
        except OSError:
            pass

    timer = threading.Timer(seconds, cut_short)
    timer.start()
    note = ""
    try:
        with MemoryGuard(server.pid):
            scenario.run(ctx, server, 99)
    except Exception as exc:
        note = f"profiled run ended: {str(exc)[:200]}\n"
    finally:
        timer.cancel()
        finish_recording()
        server.stop()
    if cut:
        note += f"(recording cut after {seconds:.0f}s and the server killed)\n"
    if not out.exists():
        return note + "py-spy wrote no profile"
    return note + summarize(out.read_text(errors="replace"))
