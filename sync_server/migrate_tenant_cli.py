"""`webhost-sync migrate-tenant`: drive a live tenant migration on a running server (the server
holds the customer's rooms, so only it can pause their writes) and draw its progress."""
from __future__ import annotations

import argparse
import os
import sys
import time

import httpx

BAR = 30


def add_parser(sub) -> None:
    p = sub.add_parser("migrate-tenant", help="move a customer between the shared and a dedicated database (live)")
    p.add_argument("--customer", required=True, help="customer id")
    p.add_argument("--to", required=True, choices=("single_tenant", "multi_tenant"))
    p.add_argument("--plan", help="plan whose retention applies when moving to multi_tenant (default: current)")
    p.add_argument("--infrastructure", default="local", choices=("local", "flyio", "hetzner"))
    p.add_argument("--server", default=None, help="server base URL (default http://HOST:PORT)")
    p.add_argument("--token", default=os.environ.get("WEBHOST_OPERATOR_TOKEN"),
                   help="operator session token (default $WEBHOST_OPERATOR_TOKEN)")
    p.add_argument("--yes", action="store_true", help="do not ask before leaving rows past retention behind")


def _bar(done: int, total: int | None, label: str) -> str:
    frac = (done / total) if total else 0.0
    filled = int(BAR * frac)
    return f"\r[{'#' * filled}{'-' * (BAR - filled)}] {frac * 100:5.1f}%  {done:,}/{(total or 0):,} rows  {label:<28}"


def run(args: argparse.Namespace) -> int:
    server = args.server or f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
    if not args.token:
        print("webhost-sync: --token or WEBHOST_OPERATOR_TOKEN is required (an operator session token)",
              file=sys.stderr)
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
        print(f"plan {info['plan']} keeps {info['retention_days']} days: {total:,} rows older than "
              f"{info['cutoff']} will NOT be copied ({detail})")
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
    while True:
        mig = client.get(f"{path}/{mid}").json()
        prog = mig["progress"]
        label = prog.get("table") or ("verifying" if mig["status"] == "running" and prog.get("done") else "starting")
        sys.stderr.write(_bar(prog.get("done") or 0, prog.get("total"), label))
        sys.stderr.flush()
        if mig["status"] != "running":
            break
        time.sleep(0.2)
    sys.stderr.write("\n")
    if mig["status"] == "failed":
        print(f"migration failed: {mig['error']}")
        return 1
    print(f"switched: writes paused {mig['pause_ms']:.0f} ms; source cleaned after {mig['cleanup_after']}")
    for table, check in sorted(mig["tables"].items()):
        print(f"  {table:<26} {check['rows']:>10,} rows  md5 {check['md5'] or '-'}")
    return 0
