"""50,000 idle sync connections on one node (issue 20): RSS, idle CPU, and an edit broadcast to every
room reaching every client afterwards.

    .venv/bin/python bench/idle_50k.py [--clients 50000] [--rooms 1000] [--processes 4]

Raises the file-descriptor limit of this process (inherited by the server and the JS clients: run
it as a user allowed to, e.g. root) and serves on 0.0.0.0 so that the clients can spread over
127.0.0.1 and 127.0.0.2 (one destination address has ~28,000 ephemeral ports). Phase A opens one
client per room, phase B the rest; then the idle window; then the first client of every room pushes
one entry to Y.Array `log` and every client is asked whether it holds one.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import procstat  # noqa: E402
from harness.clients import JsClient, shares, stop_all  # noqa: E402
from harness.database import (
    SLUG,  # noqa: E402
    BenchDatabase,  # noqa: E402
)
from harness.servers import SECRET_KEY, mint_token  # noqa: E402

from tests.support.server import ServerProcess  # noqa: E402

ADDRESSES = ("127.0.0.1", "127.0.0.2")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50_000)
    parser.add_argument("--rooms", type=int, default=1_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--idle-window", type=float, default=15.0)
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / ".work" / "idle_50k")
    args = parser.parse_args()
    want = args.clients + 2_000  # the server's sockets, its database pool and files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):  # not allowed to raise the hard limit here: as many as it allows
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if want > hard:
            print(f"file-descriptor hard limit {hard:,} (not raisable here): {hard - 2_000:,} clients instead")
            args.clients = hard - 2_000
    args.work.mkdir(parents=True, exist_ok=True)
    database = BenchDatabase().create()
    env = {
        "DATABASE_URL": database.url,
        "SECRET_KEY": SECRET_KEY,
        "DATA_DIR": str(args.work / "data"),
        "LOG_LEVEL": "warning",
        "SHUTDOWN_TIMEOUT_SECONDS": "1",
    }
    token = mint_token(database.customer_id)
    server = ServerProcess(env, log_path=args.work / "server.log")
    server.env["HOST"] = "0.0.0.0"
    opened: list[JsClient] = []
    try:
        server.start(timeout=60)
        pid = server.proc.pid

        def open_clients(count: int, first: int, processes: int) -> tuple[list[JsClient], int, float]:
            batch, offset, start = [], first, time.monotonic()
            for i, share in enumerate(shares(count, processes)):
                url = f"ws://{ADDRESSES[i % len(ADDRESSES)]}:{server.port}/sync/{SLUG}"
                batch.append(
                    JsClient(
                        "idle.js",
                        args.work,
                        server=url,
                        prefix="k50",
                        token=token,
                        rooms=args.rooms,
                        clients=share,
                        first=offset,
                        parallel=100,
                        timeout=600,
                        hold=1200,
                    )
                )
                offset += share
            opened.extend(batch)
            synced = sum(c.wait("ready", 660)["synced"] for c in batch)
            return batch, synced, time.monotonic() - start

        time.sleep(2)
        rss0 = procstat.rss_bytes(pid)
        writers, synced_a, _ = open_clients(args.rooms, 0, 1)
        time.sleep(3)
        rss_a = procstat.rss_bytes(pid)
        _, synced_b, seconds_b = open_clients(args.clients - args.rooms, args.rooms, args.processes)
        time.sleep(5)
        rss_b = procstat.rss_bytes(pid)
        cpu0 = procstat.cpu_seconds(pid)
        time.sleep(args.idle_window)
        idle_cpu = 100.0 * (procstat.cpu_seconds(pid) - cpu0) / args.idle_window
        writers[0].say("write")
        wrote = writers[0].wait("wrote", 60)["rooms"]
        time.sleep(10)
        for client in opened:
            client.say("count")
        counts = [client.wait("count", 120) for client in opened]
        seen = sum(c["seen"] for c in counts)
        still_open = sum(c["open"] for c in counts)
        total = sum(c["total"] for c in counts)
        rss_end = procstat.rss_bytes(pid)
    finally:
        stop_all(opened)
        server.stop()
        database.drop()
    connected = synced_a + synced_b
    print(f"| clients connected (of {args.clients:,}) | {connected:,} |")
    print(f"| connections opened per second (phase B) | {synced_b / seconds_b:,.0f} |")
    print(f"| server RSS with all connected (MiB) | {rss_b / 2**20:,.1f} (before any client: {rss0 / 2**20:,.1f}) |")
    print(f"| memory per connection, RSS delta of phase B (KiB) | {(rss_b - rss_a) / max(1, synced_b) / 1024:.2f} |")
    print(f"| server CPU while idle, {args.idle_window:.0f} s (% of a core) | {idle_cpu:.2f} |")
    print(f"| rooms written to (one entry each) | {wrote:,} |")
    print(f"| clients holding the room's entry afterwards | {seen:,} of {total:,} ({still_open:,} still open) |")
    print(f"| server RSS at the end (MiB) | {rss_end / 2**20:,.1f} |")
    return 0 if seen == total == connected else 1


if __name__ == "__main__":
    raise SystemExit(main())
