#!/usr/bin/env python3
"""Per-query cost of the tenant scope: 1,000 tenant-scoped count queries on one connection (a
prepared statement, inside one tenant() transaction), with and without TENANT_ROWS, plus 1,000 whole
tenant() transactions of one count each. 20 customers x 625 vehicles.

    .venv/bin/python bench/scope_cost.py

Runs against the code on PYTHONPATH: the signed scope (storage.AppRole), or a checkout from before
it (Database without a role), so the same script measures both sides. Needs PostgreSQL as
tests/support/databases finds it (a database is created and dropped). Numbers: README, "Data and tenancy".
"""

import asyncio
import inspect
import statistics
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from storage import Database, migrator  # noqa: E402
from storage.database import TENANT_ROWS  # noqa: E402
from tests.support import databases  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdef0123456789"


async def main():
    admin = ADMIN  # found before the event loop starts (admin_url runs its own)
    url = await databases.create_database(admin, prefix="wh_cost")
    try:
        await migrator.migrate(url)
        owner = await asyncpg.connect(url)
        cids = [
            await owner.fetchval("INSERT INTO customers (slug, name) VALUES ($1, $1) RETURNING id", f"c{i}")
            for i in range(20)
        ]
        await owner.execute(
            "INSERT INTO vehicles (customer_id, name, vehicle_identifier) "
            "SELECT c, 'v' || g, 'v' || g FROM unnest($1::uuid[]) c, generate_series(1, 625) g",
            cids,
        )
        await owner.execute("ANALYZE vehicles")
        await owner.close()
        if "role" in inspect.signature(Database).parameters:
            from storage import AppRole

            db = Database(url, AppRole.from_secret(SECRET), min_size=1, max_size=1)
        else:
            db = Database(url, min_size=1, max_size=1)
        await db.open()
        cid = cids[7]
        for label, sql in (
            ("policy only", "SELECT count(*) FROM vehicles"),
            ("with TENANT_ROWS", "SELECT count(*) FROM vehicles WHERE " + TENANT_ROWS),
        ):
            async with db.tenant(cid) as conn:
                assert await conn.fetchval(sql) == 625
                plan = await conn.fetch("EXPLAIN (ANALYZE, TIMING ON) " + sql)
                stmt = await conn.prepare(sql)
                for _ in range(200):
                    await stmt.fetchval()
                runs = []
                for _ in range(5):
                    t = time.perf_counter()
                    for _ in range(1000):
                        await stmt.fetchval()
                    runs.append((time.perf_counter() - t) * 1000)
            print(
                f"{label}: 1000 queries median {statistics.median(runs):.1f} ms, min {min(runs):.1f} ms (runs {', '.join(f'{r:.1f}' for r in runs)})"
            )
            print("   ", " | ".join(r[0].strip() for r in plan if "Execution" in r[0] or "Planning" in r[0]))
        # the same count, 1,000 times inside the server (a PL/pgSQL loop): no client, no network
        for label, where in (("policy only", ""), ("with TENANT_ROWS", " WHERE " + TENANT_ROWS)):
            loop = (
                "DO $$ DECLARE t0 timestamptz := clock_timestamp(); n bigint; BEGIN "
                f"FOR i IN 1..1000 LOOP SELECT count(*) INTO n FROM vehicles{where}; END LOOP; "
                "PERFORM set_config('bench.ms', (extract(epoch FROM clock_timestamp() - t0) * 1000)::text, true); "
                "END $$"
            )
            runs = []
            async with db.tenant(cid) as conn:
                for _ in range(6):
                    await conn.execute(loop)
                    runs.append(float(await conn.fetchval("SELECT current_setting('bench.ms')")))
            runs = runs[1:]
            print(
                f"{label}, server-side loop: 1000 queries median {statistics.median(runs):.1f} ms, "
                f"min {min(runs):.1f} ms (runs {', '.join(f'{r:.1f}' for r in runs)})"
            )
        # whole transactions: tenant() + one count query
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(1000):
                async with db.tenant(cid) as conn:
                    await conn.fetchval("SELECT count(*) FROM vehicles WHERE " + TENANT_ROWS)
            runs.append((time.perf_counter() - t) * 1000)
        print(
            f"tenant() + count, 1000 transactions: median {statistics.median(runs):.1f} ms, min {min(runs):.1f} ms (runs {', '.join(f'{r:.1f}' for r in runs)})"
        )
        await db.close()
    finally:
        await databases.drop_database(admin, url)


if __name__ == "__main__":
    ADMIN = databases.admin_url()
    asyncio.run(main())
