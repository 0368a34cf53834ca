#!/usr/bin/env python3
"""Peak memory and time of `webhost-sync export-tenant` / `import-tenant` as whole processes
(`/usr/bin/time -v`) for a customer with N and 10 x N GPS positions (made by SQL): if the commands
stream, the peak RSS hardly moves with the data while the time grows with it.

    .venv/bin/python bench/tenant_archive.py [N]        # default N = 10000

Needs PostgreSQL as tests/support/databases finds it (databases are created and dropped). Loads
one core (the CLI) plus PostgreSQL for about a minute at the default. Numbers: README, "Tenant
export and import".
"""

import asyncio
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from storage import migrator  # noqa: E402
from tests.support import databases, tenants  # noqa: E402

EXE = str(Path(sys.executable).parent / "webhost-sync")
SECRET = "bench-secret-key-0123456789abcdef0123456789"
KEY = "YmVuY2gtZW5jcnlwdGlvbi1rZXktMDEyMzQ1Njc4OWE"


async def timed(args: list[str], url: str, data_dir: str) -> tuple[float, int]:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": url, "DATA_DIR": data_dir, "SECRET_KEY": SECRET}
    env.update(ENCRYPTION_KEY=KEY, LOG_LEVEL="warning")
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/time", "-v", EXE, *args, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    text = err.decode()
    if proc.returncode != 0:
        raise SystemExit(f"{args[0]} failed:\n{text}")
    m, s = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+\.\d+)", text).groups()  # type: ignore[union-attr]
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))  # type: ignore[union-attr]
    return int(m or 0) * 60 + float(s), rss


async def main(n: int) -> None:
    admin = ADMIN
    made = []
    try:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for size in (n, 10 * n):
                source = await databases.create_database(admin, prefix="wh_arch")
                target = await databases.create_database(admin, prefix="wh_arch")
                made += [source, target]
                for url in (source, target):
                    await migrator.migrate(url)
                cid = await tenants.seed_customer(source, slug=f"c{size}", gps_rows=size)
                archive = os.path.join(tmp, f"{size}.whsa")
                ex = await timed(["export-tenant", "--customer", str(cid), "--out", archive], source, tmp)
                im = await timed(["import-tenant", "--in", archive], target, tmp)
                rows.append((size, ex, im, os.path.getsize(archive)))
        for size, (et, er), (it, ir), nbytes in rows:
            print(
                f"{size:>9,} positions  archive {nbytes / 1e6:6.1f} MB  export {et:6.1f} s {er / 1024:6.1f} MB peak  "
                f"import {it:6.1f} s {ir / 1024:6.1f} MB peak"
            )
        (_, (et0, er0), (it0, ir0), _), (_, (et1, er1), (it1, ir1), _) = rows
        print(
            f"10x the rows: export peak RSS x{er1 / er0:.2f}, time x{et1 / et0:.2f}; "
            f"import peak RSS x{ir1 / ir0:.2f}, time x{it1 / it0:.2f}"
        )
    finally:
        for url in made:
            await databases.drop_database(admin, url)


if __name__ == "__main__":
    ADMIN = databases.admin_url()  # before the event loop starts (admin_url runs its own)
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
