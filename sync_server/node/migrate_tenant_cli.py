"""`webhost-sync migrate-tenant`: drive a live tenant migration on a running server (the server
holds the customer's rooms, so only it can pause their writes) and draw its progress."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TextIO

import httpx

BAR = 30


def add_parser(sub) -> None:
    p = sub.add_parser("migrate-tenant", help="move a customer between the shared and a dedicated database (live)")
    p.add_argument("--customer", required=True, help="customer id")
    p.add_argument("--to", required=True, choices=("single_tenant", "multi_tenant"))
    p.add_argument("--plan", help="plan whose retention applies when moving to multi_tenant (default: current)")
    p.add_argument("--infrastructure", default="local", choices=("local", "flyio", "hetzner"))
    p.add_argument("--server", default=None, help="server base URL (default http://HOST:PORT)")
    p.add_argument(
        "--token",
        default=os.environ.get("WEBHOST_OPERATOR_TOKEN"),
        help="operator session token (default $WEBHOST_OPERATOR_TOKEN)",
    )
    p.add_argument("--yes", action="store_true", help="do not ask before leaving rows past retention behind")


def _bar(done: int, total: int | None) -> str:
    frac = min(done / total, 1.0) if total else 1.0
    filled = int(BAR * frac)
    return f"[{'#' * filled}{'-' * (BAR - filled)}] {frac * 100:5.1f}%"


class Progress:
    """Draws a migration's copy progress from its `progress` field (rows copied per table and in
    all). On a terminal: one bar redrawn in place, plus a finished line per table. Otherwise (a log,
    a pipe): plain lines, one per change, no carriage returns."""

    def __init__(self, stream: TextIO, tty: bool) -> None:
        self.stream, self.tty = stream, tty
        self.printed: dict[str, int] = {}  # rows per table the last line said (finished lines on a tty)
        self.phase = "starting"

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _say(self, line: str) -> None:
        self._write(f"\r\x1b[K{line}\n" if self.tty else f"{line}\n")

    def update(self, mig: dict) -> None:
        prog = mig.get("progress") or {}
        tables = prog.get("tables") or []
        total = prog.get("total") or sum(t["total"] or 0 for t in tables)
        phase = ("verifying and switching" if prog.get("copied") else "copying") if tables else "starting"
        if phase != self.phase and phase != "starting":
            if self.phase == "starting":
                self._say(f"copying {total:,} rows in {len(tables)} tables")
            if phase == "verifying and switching":
                self._show_tables(tables)
                self._say(
                    f"copied {prog.get('done') or 0:,} rows; catching up, verifying and switching (writes pause now)"
                )
            self.phase = phase
        if phase == "copying":
            self._show_tables(tables)
        if self.tty and phase != "starting":
            current = next((t for t in tables if t["table"] == prog.get("table")), None)
            done = prog.get("done") or 0
            detail = (
                f"{current['table']} {current['done']:,}/{(current['total'] or 0):,}"
                if current and phase == "copying"
                else phase
            )
            if mig.get("status") not in (None, "running"):
                detail = mig["status"]
            self._write(f"\r\x1b[K{_bar(done, total)}  {done:,}/{total:,} rows  {detail}")

    def _show_tables(self, tables: list[dict]) -> None:
        for t in tables:
            name, done, of = t["table"], t["done"], t["total"] or 0
            if self.tty:  # a finished line per table; the bar shows the one in progress
                if name not in self.printed and of and done >= of:
                    self.printed[name] = done
                    self._say(f"  {name:<26} {_bar(done, of)}  {done:,}/{of:,} rows")
            elif done != self.printed.get(name, 0):
                self.printed[name] = done
                in_all = sum(x["done"] for x in tables)
                self._say(
                    f"copy {name}: {done:,}/{of:,} rows ({in_all:,}/{sum(x['total'] or 0 for x in tables):,} "
                    f"in all, {min(done / of, 1.0) * 100 if of else 100.0:.1f}% of the table)"
                )

    def finish(self) -> None:
        if self.tty:
            self._write("\n")


def run(args: argparse.Namespace) -> int:
    server = args.server or f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
    if not args.token:
        print(
            "webhost-sync: --token or WEBHOST_OPERATOR_TOKEN is required (an operator session token)", file=sys.stderr
        )
        return 2
    client = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {args.token}"}, timeout=30)
    path = f"/api/v1/customers/{args.customer}/migrations"
    body = {"to": args.to, "infrastructure": args.infrastructure, **({"plan": args.plan} if args.plan else {})}
    plan = client.post(path, json={**body, "dry_run": True})
    if plan.status_code != 200:
        print(f"webhost-sync: refused: {plan.json().get('error', plan.text)}", file=sys.stderr)
        return 1
    info = plan.json()
    print(f"moving customer {args.customer}: {info['from']} -> {info['to']}")
    if info.get("dropping"):
        total = sum(info["dropping"].values())
        detail = ", ".join(f"{t}: {n:,}" for t, n in info["dropping"].items())
        print(
            f"plan {info['plan']} keeps {info['retention_days']} days: {total:,} rows older than "
            f"{info['cutoff']} will NOT be copied ({detail})"
        )
        if not args.yes:
            if not sys.stdin.isatty():
                print("webhost-sync: rows would be dropped; pass --yes to proceed", file=sys.stderr)
                return 1
            if input("proceed? [y/N] ").strip().lower() not in ("y", "yes"):
                return 1
    r = client.post(path, json=body)
    if r.status_code != 202:
        print(f"webhost-sync: refused: {r.json().get('error', r.text)}", file=sys.stderr)
        return 1
    mid = r.json()["id"]
    progress = Progress(sys.stderr, sys.stderr.isatty())
    while True:
        mig = client.get(f"{path}/{mid}").json()
        progress.update(mig)
        if mig["status"] != "running":
            break
        time.sleep(0.2)
    progress.finish()
    if mig["status"] == "failed":
        print(f"migration failed: {mig['error']}")
        return 1
    print(f"switched: writes paused {mig['pause_ms']:.0f} ms; source cleaned after {mig['cleanup_after']}")
    for table, check in sorted(mig["tables"].items()):
        print(f"  {table:<26} {check['rows']:>10,} rows  md5 {check['md5'] or '-'}")
    return 0
