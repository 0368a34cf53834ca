"""50,000 idle sync connections on one node (issue 20): RSS, idle CPU, and an edit broadcast to every
room reaching every client afterwards.

    .venv/bin/python bench/idle_50k.py [--clients 50000] [--rooms 1000] [--workers 3] [--processes 6]

Raises the file-descriptor limit of this process (inherited by the server and the JS clients) as
far as the host allows. Where the hard limit is below what one process would need (this sandbox:
20,000 per process, not raisable), the node runs as WORKERS=N processes on the one port
(SO_REUSEPORT; they cooperate through Redis, so `--redis` must reach one) and the clients are spread
over `--processes` Node processes: every process stays below the limit. With `--workers 1` and a
limit too low, it runs as many clients as the limit allows. The node serves on 0.0.0.0 so that the
clients can spread over 127.0.0.1, 127.0.0.2 and 127.0.0.3 (one destination address has ~28,000
ephemeral ports). Phase A opens one client per room, phase B the rest (the kernel spreads them over
the workers, so a room's clients sit on different workers and its broadcast crosses Redis); then the
idle window; then the first client of every room pushes one entry to Y.Array `log` and every client
is asked whether it holds one. RSS and CPU are summed over the supervisor and its workers.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import secrets
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from harness import procstat  # noqa: E402
from harness.clients import JsClient, shares, stop_all  # noqa: E402
from harness.database import (
    SLUG,  # noqa: E402
    BenchDatabase,  # noqa: E402
)
from harness.servers import SECRET_KEY, mint_token  # noqa: E402

from tests.support.server import ServerProcess, child_pids, free_port, process_tree  # noqa: E402

ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
SPARE_FDS = 2_000  # a process's own sockets, its database pool and files, beyond its clients


def tree_sum(pid: int, measure) -> float:
    total = 0.0
    for p in process_tree(pid):
        try:
            total += measure(p)
        except OSError:
            pass
    return total


def pss_bytes(pid: int) -> int:
    """Proportional set size (shared pages split among their users): RSS without double counting."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def sockets(pid: int) -> int:
    return sum(1 for fd in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(fd).startswith("socket:"))


def fanout_entries(base: int, workers: int) -> list[tuple[int, int]]:
    """(published, received) Redis stream entries of each worker, from its own /metrics port."""
    out = []
    for i in range(workers):
        seen = {"published": 0, "received": 0}
        text = httpx.get(f"http://127.0.0.1:{base + i}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith("webhost_fanout_entries_total{"):
                direction = line.split('direction="', 1)[1].split('"', 1)[0]
                seen[direction] = int(float(line.rsplit(" ", 1)[1]))
        out.append((seen["published"], seen["received"]))
    return out


def worker_ports(count: int) -> int:
    """The first of `count` consecutive free ports (the workers' own metrics ports)."""
    while True:
        base = free_port()
        try:
            for i in range(count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50_000)
    parser.add_argument("--rooms", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=1, help="node processes on the one port (WORKERS)")
    parser.add_argument("--processes", type=int, default=0, help="client processes (0: as the fd limit needs)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the workers' fan-out (--workers > 1)")
    parser.add_argument("--idle-window", type=float, default=15.0)
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / ".work" / "idle_50k")
    args = parser.parse_args()
    # Each worker holds about clients / workers sockets (the kernel spreads them), each client
    # process its share: every one of them must stay below the per-process limit.
    want = math.ceil(args.clients / args.workers * 1.05) + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
        hard = max(hard, want)
    except (ValueError, OSError):  # not allowed to raise the hard limit here: as many as it allows
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if want > hard:
            fit = int((hard - SPARE_FDS) * args.workers / 1.05) if args.workers > 1 else hard - SPARE_FDS
            print(f"file-descriptor hard limit {hard:,} per process (not raisable here): {fit:,} clients instead")
            args.clients = fit
    per_process = hard - SPARE_FDS
    if not args.processes:
        args.processes = max(4, math.ceil((args.clients - args.rooms) / (per_process // 2)))
    if math.ceil((args.clients - args.rooms) / args.processes) > per_process:
        parser.error(f"--processes {args.processes}: over {per_process:,} sockets per client process")
    args.work.mkdir(parents=True, exist_ok=True)
    database = BenchDatabase().create()
    env = {
        "DATABASE_URL": database.url,
        "SECRET_KEY": SECRET_KEY,
        "DATA_DIR": str(args.work / "data"),
        "LOG_LEVEL": "warning",
        "SHUTDOWN_TIMEOUT_SECONDS": "1",
    }
    if args.workers > 1:
        env.update(
            {
                "WORKERS": str(args.workers),
                "WORKER_PORT_BASE": str(worker_ports(args.workers)),
                "REDIS_URL": args.redis,
                "REDIS_PREFIX": f"idle50k-{secrets.token_hex(6)}:",
            }
        )
    token = mint_token(database.customer_id)
    server = ServerProcess(env, log_path=args.work / "server.log")
    server.env["HOST"] = "0.0.0.0"
    opened: list[JsClient] = []
    try:
        server.start(timeout=60)
        pid = server.proc.pid
        if args.workers > 1:
            deadline = time.monotonic() + 60
            while len(child_pids(pid)) < args.workers and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(3)  # every worker listening (the shared port answers with the first)

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
        rss0 = tree_sum(pid, procstat.rss_bytes)
        writers, synced_a, _ = open_clients(args.rooms, 0, 1)
        time.sleep(3)
        rss_a = tree_sum(pid, procstat.rss_bytes)
        load_open = os.getloadavg()[0]
        _, synced_b, seconds_b = open_clients(args.clients - args.rooms, args.rooms, args.processes)
        time.sleep(5)
        rss_b, pss_b = tree_sum(pid, procstat.rss_bytes), tree_sum(pid, pss_bytes)
        per_worker = {p: sockets(p) for p in process_tree(pid)}
        cpu0 = tree_sum(pid, procstat.cpu_seconds)
        time.sleep(args.idle_window)
        idle_cpu = 100.0 * (tree_sum(pid, procstat.cpu_seconds) - cpu0) / args.idle_window
        load_idle = os.getloadavg()[0]
        writers[0].say("write")
        wrote = writers[0].wait("wrote", 60)["rooms"]
        time.sleep(10)
        for client in opened:
            client.say("count")
        counts = [client.wait("count", 120) for client in opened]
        seen = sum(c["seen"] for c in counts)
        still_open = sum(c["open"] for c in counts)
        total = sum(c["total"] for c in counts)
        rss_end = tree_sum(pid, procstat.rss_bytes)
        fanout = fanout_entries(int(env["WORKER_PORT_BASE"]), args.workers) if args.workers > 1 else []
    finally:
        stop_all(opened)
        server.stop()
        database.drop()
    connected = synced_a + synced_b
    node = f"WORKERS={args.workers}: supervisor + workers" if args.workers > 1 else "one process"
    print(f"| node | {node}, {len(per_worker)} process(es) |")
    print(f"| client processes (phase B) | {args.processes} over {', '.join(ADDRESSES)} |")
    print(f"| clients connected (of {args.clients:,}) | {connected:,} |")
    spread = " / ".join(f"{n:,}" for n in per_worker.values())
    print(f"| sockets per process (supervisor first when WORKERS > 1) | {spread} |")
    print(f"| connections opened per second (phase B) | {synced_b / seconds_b:,.0f} (load {load_open:.1f}) |")
    print(f"| server RSS with all connected (MiB) | {rss_b / 2**20:,.1f} (before any client: {rss0 / 2**20:,.1f}) |")
    print(f"| server PSS with all connected (MiB) | {pss_b / 2**20:,.1f} |")
    print(f"| memory per connection, RSS delta of phase B (KiB) | {(rss_b - rss_a) / max(1, synced_b) / 1024:.2f} |")
    print(f"| memory per connection, all RSS / clients (KiB) | {rss_b / max(1, connected) / 1024:.2f} |")
    print(f"| server CPU while idle, {args.idle_window:.0f} s (% of a core) | {idle_cpu:.2f} (load {load_idle:.1f}) |")
    print(f"| rooms written to (one entry each) | {wrote:,} |")
    print(f"| clients holding the room's entry afterwards | {seen:,} of {total:,} ({still_open:,} still open) |")
    print(f"| server RSS at the end (MiB) | {rss_end / 2**20:,.1f} |")
    if fanout:
        entries = " / ".join(f"{p:,} / {r:,}" for p, r in fanout)
        print(f"| Redis fan-out entries published / received, per worker | {entries} |")
    return 0 if seen == total == connected else 1


if __name__ == "__main__":
    raise SystemExit(main())
