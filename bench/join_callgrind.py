"""Instructions per sync join in our server process: valgrind callgrind (user space only, so the
count does not depend on what else the shared machine is doing; the kernel's share, the sockets'
system calls, is not in it). The idle scenario's phase B: `--rooms` clients open one room each,
then `--clients` more join those rooms (idle.js: y-websocket protocol peers, synced, silent).

    .venv/bin/python bench/join_callgrind.py [--clients 1500] [--rooms 150] [--tree DIR]

Two runs of the server under callgrind: one with phase B, one without (start-up, the rooms' loads
and shutdown, subtracted); the difference over `--clients` is the figure. `--tree DIR` runs another
checkout's server (PYTHONPATH), e.g. `git archive <commit> | tar -x -C DIR`. About 2 x 2 minutes.
Runs differ by a few thousand instructions per join (timer and read boundaries differ: 543.5k and
545.7k were measured for two trees that differ only in one call on this path).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from harness.clients import JsClient, shares, stop_all  # noqa: E402
from harness.database import BenchDatabase  # noqa: E402
from harness.servers import SECRET_KEY, mint_token  # noqa: E402

from tests.support.server import free_port  # noqa: E402


def instructions(tree: str | None, rooms: int, clients: int, work: Path) -> tuple[int, int]:
    """(total instructions of one server process, clients that synced in phase B)."""
    db = BenchDatabase().create()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db.url,
        "SECRET_KEY": SECRET_KEY,
        "DATA_DIR": str(work / "data"),
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "json",
        "SHUTDOWN_TIMEOUT_SECONDS": "1",
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    if tree:
        env["PYTHONPATH"] = tree
    out = work / "callgrind.out"
    exe = Path(sys.executable).parent / "webhost-sync"
    with open(work / "server.log", "wb") as log:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(exe), "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    opened: list[JsClient] = []
    ws = f"ws://127.0.0.1:{port}/sync/bench"
    token = mint_token(db.customer_id)

    def open_clients(count: int, first: int, processes: int) -> int:
        batch, offset = [], first
        for share in shares(count, processes):
            batch.append(
                JsClient(
                    "idle.js",
                    work,
                    server=ws,
                    prefix="jc",
                    token=token,
                    rooms=rooms,
                    clients=share,
                    first=offset,
                    parallel=30,
                    timeout=600,
                    hold=700,
                )
            )
            offset += share
        opened.extend(batch)
        return sum(c.wait("ready", 650)["synced"] for c in batch)

    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"server did not start under callgrind: {(work / 'server.log').read_text()[-2000:]}")
        open_clients(rooms, 0, 1)
        time.sleep(3)
        synced = open_clients(clients, rooms, 2) if clients else 0
        time.sleep(3)
    finally:
        stop_all(opened)
        proc.send_signal(signal.SIGINT)
        proc.wait(180)
        db.drop()
    totals = [
        int(line.split()[1])
        for line in out.read_text(errors="replace").splitlines()
        if line.startswith(("summary:", "totals:"))
    ]
    return max(totals), synced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1500)
    parser.add_argument("--rooms", type=int, default=150)
    parser.add_argument("--tree", default=None, help="another checkout's server (PYTHONPATH)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wh-join-cg-") as tmp:
        base_dir, full_dir = Path(tmp) / "base", Path(tmp) / "full"
        base_dir.mkdir()
        full_dir.mkdir()
        base, _ = instructions(args.tree, args.rooms, 0, base_dir)
        full, synced = instructions(args.tree, args.rooms, args.clients, full_dir)
    if synced != args.clients:
        sys.exit(f"only {synced} of {args.clients} clients synced")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{stamp} tree={args.tree or ROOT} joins={synced} instructions_per_join={(full - base) / synced:,.0f}")


if __name__ == "__main__":
    main()
