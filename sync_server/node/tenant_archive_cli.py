"""`webhost-sync export-tenant` and `import-tenant`: one customer's data to and from a portable,
checksummed archive (storage/tenant_archive.py says what it holds and how import stays atomic).

Both work on a database directly (DATABASE_URL, or --database-url for a dedicated one), not through
a running server: export reads one consistent snapshot while the customer keeps working; import
writes a customer that is not served there yet (or, with --replace, overwrites one)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from sync_server.node.migrate_tenant_cli import _bar


def add_parsers(sub) -> None:
    ex = sub.add_parser("export-tenant", help="write one customer's data (every tenant table) to an archive file")
    ex.add_argument("--customer", required=True, help="customer id")
    ex.add_argument("--out", required=True, type=Path, help="archive file to write (gzip)")
    ex.add_argument("--database-url", help="the database holding the customer (default DATABASE_URL)")
    im = sub.add_parser("import-tenant", help="load a customer's archive into the shared or a dedicated database")
    im.add_argument("--in", dest="infile", required=True, type=Path, help="archive file made by export-tenant")
    im.add_argument("--database-url", help="the database to load into (default DATABASE_URL)")
    im.add_argument("--replace", action="store_true", help="overwrite the customer's data if it already exists")


class Bar:
    """One progress bar redrawn in place on a terminal (stderr); silent otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.tty, self.last = stream, stream.isatty(), 0.0

    def __call__(self, table: str, table_done: int, done: int, total: int) -> None:
        now = time.monotonic()
        if self.tty and (now - self.last > 0.1 or done >= total):
            self.last = now
            self.stream.write(f"\r\x1b[K{_bar(done, total)}  {done:,}/{total:,} rows  {table}")
            self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _done(result: dict | int, bar: Bar, summary: Callable[[dict], str]) -> int:
    """After the job: end the bar; on success the summary and every table's rows and checksum."""
    bar.finish()
    if isinstance(result, int):
        return result
    print(summary(result))
    for name, check in result["tables"].items():
        print(f"  {name:<26} {check['rows']:>10,} rows  md5 {check['md5'] or '-'}")
    return 0


def export_tenant(args: argparse.Namespace) -> int:
    from storage import tenant_archive

    try:
        cid = uuid.UUID(args.customer)
    except ValueError:
        print(f"webhost-sync: --customer {args.customer!r} is not a customer id", file=sys.stderr)
        return 2
    bar = Bar(sys.stderr)
    result = _with_db(args, lambda db: tenant_archive.export(db, cid, args.out, bar))
    return _done(result, bar, lambda r: f"exported customer {cid}: {r['rows']:,} rows to {args.out}")


def import_tenant(args: argparse.Namespace) -> int:
    from storage import tenant_archive

    bar = Bar(sys.stderr)
    result = _with_db(args, lambda db: tenant_archive.import_(db, args.infile, replace=args.replace, progress=bar))
    return _done(
        result,
        bar,
        lambda r: f"imported customer {r['customer_id']}: {r['rows']:,} rows, every table's checksum matches",
    )


def _with_db(args: argparse.Namespace, job) -> dict | int:
    """Run `job(db)` on the chosen database (migrated first, like the other commands); a refused
    archive or an unreachable database is one line on stderr and exit code 1 or 2."""
    import dataclasses

    import asyncpg

    from storage import Database, migrator, sealing, tenant_archive
    from sync_server.node.cli import _settings, _with_database

    settings = _settings()
    if args.database_url:
        settings = dataclasses.replace(settings, database_url=args.database_url)
    settings, url = _with_database(settings)
    sealing.install(settings.keyring())

    async def main() -> dict:
        await migrator.migrate(url)
        # beside running servers their scope key stays as it is; a database no server used yet
        # (a fresh dedicated one) gets this node's key
        owner = await asyncpg.connect(url)
        try:
            fresh = not await owner.fetchval("SELECT EXISTS (SELECT 1 FROM webhost_scope_key)")
        finally:
            await owner.close()
        db = Database(url, settings.app_role(), min_size=1, max_size=2)
        await db.open(install_key=fresh)
        try:
            async with db.operator("tenant_archive_check") as conn:
                if not await conn.fetchval("SELECT webhost_is_operator()"):
                    raise RuntimeError(
                        "the database does not accept this node's scope: run this with the servers' SECRET_KEY"
                    )
            return await job(db)
        finally:
            await db.close()

    lead = "\n" if sys.stderr.isatty() else ""  # below a progress bar
    try:
        return asyncio.run(main())
    except tenant_archive.ArchiveError as exc:
        print(f"{lead}webhost-sync: refused: {exc}", file=sys.stderr)
        return 1
    except (RuntimeError, OSError) as exc:
        print(f"{lead}webhost-sync: {exc}", file=sys.stderr)
        return 2
