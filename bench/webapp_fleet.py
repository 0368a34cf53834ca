#!/usr/bin/env python3
"""The dispatcher app (/app/) with N vehicles moving once a second: browser frame rate and update
latency, against the same page with no vehicles in the same run (the reference).

A real `webhost-sync serve` on a fresh database; one customer user signed in to the app in headless
Chromium; a Node y-websocket writer moves every vehicle of the fleet document's `live` map once a
second (what the tracking pipeline writes, as one update per second here). webapp/bench/fleet.mjs
measures in the page: requestAnimationFrame frames per second, and the latency from the writer's
send to the second frame after the page applied the update.

    .venv/bin/python bench/webapp_fleet.py [--vehicles 500] [--seconds 15]

Needs PostgreSQL (as the tests find it), `make js` (webapp built, its node_modules) and Chromium.
Prints the JSON summary as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from storage import migrator  # noqa: E402
from sync_server.domain.accounts import passwords, sync_tokens  # noqa: E402
from tests.support import databases  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdef0123456789"
PASSWORD = "bench password 1"


async def _setup(url: str) -> str:
    await migrator.migrate(url)
    conn = await asyncpg.connect(url)
    try:  # as the owner: one customer and one dispatcher (bench set-up, not the code under test)
        cid = await conn.fetchval("INSERT INTO customers (slug, name) VALUES ('bench', 'Bench') RETURNING id")
        await conn.execute(
            "INSERT INTO customer_users (customer_id, email, name, role, password_hash) VALUES ($1, $2, 'D', 'member', $3)",
            cid,
            "d@bench.example",
            passwords.hash_password(PASSWORD),
        )
    finally:
        await conn.close()
    return str(cid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vehicles", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=15)
    opts = parser.parse_args()
    admin = databases.admin_url()
    url = asyncio.run(databases.create_database(admin, prefix="wh_bench"))
    work = Path(tempfile.mkdtemp(prefix="webapp-bench-"))
    try:
        cid = asyncio.run(_setup(url))
        env = {"DATABASE_URL": url, "DATA_DIR": str(work / "data"), "SECRET_KEY": SECRET, "MAP_TILE_URL": "none"}
        server = ServerProcess(env, log_path=work / "server.log").start()
        try:
            token, _ = sync_tokens.mint(SECRET, customer_id=cid, customer_slug="bench", docs=["fleet"], ttl_seconds=600)
            cfg = {
                "base": server.base_url,
                "ws": server.ws_url,
                "slug": "bench",
                "email": "d@bench.example",
                "password": PASSWORD,
                "token": token,
                "vehicles": opts.vehicles,
                "seconds": opts.seconds,
                "screenshot": str(work / f"fleet-{opts.vehicles}.png"),
            }
            (work / "cfg.json").write_text(json.dumps(cfg))
            run = subprocess.run(
                ["node", "bench/fleet.mjs", "--config", str(work / "cfg.json")],
                cwd=ROOT / "webapp",
                capture_output=True,
                text=True,
                timeout=opts.seconds * 2 + 120,
                env={**os.environ},
            )
            if run.returncode != 0:
                raise SystemExit(run.stderr[-3000:])
            result = json.loads(run.stdout.strip().splitlines()[-1])
            result["screenshot"] = cfg["screenshot"]
            result["load_1min_after"] = os.getloadavg()[0]
            print(json.dumps(result))
        finally:
            server.stop()
    finally:
        asyncio.run(databases.drop_database(admin, url))


if __name__ == "__main__":
    main()
