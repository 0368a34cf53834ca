"""One customer's data as a portable file: `webhost-sync export-tenant` / `import-tenant`.

The archive is gzip-compressed text, one JSON object per line:

    {"format": "webhost-sync-tenant-archive", "version": 1, "schema": <latest migration>,
     "customer_id": ..., "created_at": ..., "sealed": "...",
     "tables": {name: {"rows": n, "md5": checksum, "days": [first, last] | null}, ...}}
    {"table": name}                       then that table's rows, in chunks:
    {"rows": [to_jsonb(row), ...]}        (tenant_data.stream's text, written as it comes)
    ...
    {"end": true, "rows": total, "sha256": hex}

`sha256` is over every byte (uncompressed) before the last line. What travels is exactly what
tenant migration moves (tenant_data.TENANT_TABLES, the customers row included), so a table added
there travels here too; export refuses while the schema has a table with a customer_id that is
classified neither as tenant data nor as control plane (tenant_data.tables_with_customer_id).

Export reads one REPEATABLE READ snapshot: the checksums in the header and the rows after it are
the same moment. Import is one transaction on the target: rows are upserted as they are read, and
only after the last line matched its sha256, every table's row count and checksum (recomputed on
the target) matched the header and every sealed value opened does it commit; anything else rolls
back, so a refused archive leaves nothing behind. Neither side holds more than one chunk of rows.

Sealed columns (storage/sealed_columns.py: webhook_endpoints.secret) travel as their ciphertext,
never as plaintext: a value is sealed for its column and its customer id, both of which the
archive keeps, so it opens on the target if that node holds the key it was sealed under (the same
ENCRYPTION_KEY, or it among ENCRYPTION_OLD_KEYS; `rotate-key` then re-seals). Import checks every
sealed value opens and refuses the archive otherwise. The archive thus holds no secret in clear, but
it holds the customer's data: keep it like a database backup.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import migrator, sealed_columns, sealing, tenant_data
from .database import Database
from .tenant_data import TENANT_TABLES

FORMAT = "webhost-sync-tenant-archive"
VERSION = 1
MAX_LINE = 256 * 1024 * 1024  # a chunk of rows; documents are bounded by SYNC_MAX_MESSAGE_BYTES
# rows per line: documents (updates and snapshots can be large) in small chunks, others in big ones
CHUNK_ROWS = {"doc_updates": 50, "doc_snapshots": 10}
DEFAULT_CHUNK = 2000
SEALED_NOTE = "sealed columns carry their ciphertext: importing needs the key they were sealed under"

Progress = Callable[[str, int, int, int], None]  # (table, rows of it done, rows done in all, total)


class ArchiveError(Exception):
    """The archive cannot be imported (or made); the message says why, and nothing was written."""


class CustomerExists(ArchiveError):
    pass


def schema_version() -> int:
    return max(m.version for m in migrator.available())


def _tables_by_name() -> dict[str, tenant_data.TenantTable]:
    return {t.name: t for t in TENANT_TABLES}


async def _unclassified(db: Database) -> set[str]:
    async with db.platform() as conn:
        found = await tenant_data.tables_with_customer_id(conn)
    return found - set(_tables_by_name()) - tenant_data.CONTROL_PLANE_TABLES


async def export(db: Database, customer_id: uuid.UUID, out: Path, progress: Progress | None = None) -> dict:
    """Write the customer's archive to `out` (through `out.partial`, renamed when complete)."""
    missing = await _unclassified(db)
    if missing:
        raise ArchiveError(
            "tables with customer data are not classified as tenant data or control plane "
            f"(storage/tenant_data.py): {', '.join(sorted(missing))}"
        )
    partial = out.with_name(out.name + ".partial")
    digest = hashlib.sha256()
    try:
        with gzip.open(partial, "wt", encoding="utf-8", compresslevel=6) as f:

            def line(text: str) -> None:
                data = text + "\n"
                digest.update(data.encode())
                f.write(data)

            async with db.tenant(customer_id, snapshot=True) as conn:
                await tenant_data.prepare(conn)
                if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM customers WHERE id = $1)", customer_id):
                    raise ArchiveError(f"customer {customer_id} not found in this database")
                tables: dict[str, Any] = {}
                for t in TENANT_TABLES:
                    check = await tenant_data.checksum(conn, t, customer_id, None)
                    days = None
                    if t.name in tenant_data.DAY_PARTITIONED:
                        span = await tenant_data.day_range(conn, t, customer_id, None)
                        days = [span[0].isoformat(), span[1].isoformat()] if span else None
                    tables[t.name] = {**check, "days": days}
                total = sum(v["rows"] for v in tables.values())
                header = {
                    "format": FORMAT,
                    "version": VERSION,
                    "schema": schema_version(),
                    "customer_id": str(customer_id),
                    "created_at": dt.datetime.now(dt.UTC).isoformat(),
                    "sealed": SEALED_NOTE,
                    "tables": tables,
                }
                line(json.dumps(header))
                done = 0
                for t in TENANT_TABLES:
                    line(json.dumps({"table": t.name}))
                    table_done = 0
                    chunk = CHUNK_ROWS.get(t.name, DEFAULT_CHUNK)
                    async for rows_json, n in tenant_data.stream(conn, t, customer_id, None, chunk):
                        line('{"rows":' + rows_json + "}")
                        table_done += n
                        done += n
                        if progress:
                            progress(t.name, table_done, done, total)
            f.write(json.dumps({"end": True, "rows": done, "sha256": digest.hexdigest()}) + "\n")
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return {"customer_id": str(customer_id), "rows": done, "tables": tables}


class _Reader:
    """Lines of the archive, bounded, hashed as read; every fault of the file is an ArchiveError."""

    def __init__(self, f: gzip.GzipFile) -> None:
        self.f = f
        self.digest = hashlib.sha256()

    def raw(self) -> bytes:
        try:
            data = self.f.readline(MAX_LINE + 1)
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise ArchiveError(f"the archive is damaged (not a complete gzip stream): {exc}") from None
        if not data:
            raise ArchiveError("the archive is truncated: it ends before its checksum line")
        if len(data) > MAX_LINE or not data.endswith(b"\n"):
            raise ArchiveError("the archive is damaged: a line is too long or unterminated")
        return data

    def next(self) -> bytes:
        data = self.raw()
        self.digest.update(data)
        return data


def _json(data: bytes) -> dict:
    try:
        value = json.loads(data)
    except ValueError:
        raise ArchiveError("the archive is damaged: a line is not JSON") from None
    if not isinstance(value, dict):
        raise ArchiveError("the archive is damaged: a line is not a JSON object")
    return value


def _header(reader: _Reader) -> dict:
    head = _json(reader.next())
    if head.get("format") != FORMAT:
        raise ArchiveError("not a webhost-sync tenant archive")
    if head.get("version") != VERSION:
        raise ArchiveError(f"archive format version {head.get('version')!r} is not supported (this node reads 1)")
    if head.get("schema") != schema_version():
        raise ArchiveError(
            f"the archive was made at schema version {head.get('schema')!r}, this node is at {schema_version()}: "
            "import it with the same release that exported it"
        )
    tables = head.get("tables")
    if not isinstance(tables, dict) or set(tables) != set(_tables_by_name()):
        raise ArchiveError("the archive's table list does not match this release's tenant tables")
    for check in tables.values():
        if not (
            isinstance(check, dict)
            and type(check.get("rows")) is int
            and isinstance(check.get("md5"), str)
            and (check.get("days") is None or (isinstance(check["days"], list) and len(check["days"]) == 2))
        ):
            raise ArchiveError("the archive's header is damaged: a table's checksum is not valid")
    try:
        head["customer_id"] = uuid.UUID(str(head.get("customer_id")))
    except ValueError:
        raise ArchiveError("the archive's customer id is not a uuid") from None
    return head


async def _check_sealed(conn, customer_id) -> None:
    tables = set(_tables_by_name())
    for col in sealed_columns.SEALED_COLUMNS:
        if col.table not in tables:
            continue
        async for rec in conn.cursor(
            f'SELECT "{col.column}" AS v FROM "{col.table}" WHERE customer_id = $1 AND "{col.column}" IS NOT NULL',
            customer_id,
        ):
            try:
                if col.json_keys:
                    value = rec["v"] if isinstance(rec["v"], dict) else json.loads(rec["v"])
                    sealed_columns.open_json(col, customer_id, value)
                else:
                    sealing.open(rec["v"], col.purpose_for(customer_id))
            except sealing.SealError as exc:
                raise ArchiveError(
                    f"{col.table}.{col.column} of the archive does not open with this node's keys ({exc}): "
                    "import with the ENCRYPTION_KEY of the exporting node (or list it in ENCRYPTION_OLD_KEYS)"
                ) from None


async def import_(db: Database, path: Path, *, replace: bool = False, progress: Progress | None = None) -> dict:
    """Load an archive into `db` in one transaction (see the module docstring)."""
    by_name = _tables_by_name()
    try:
        f = gzip.open(path, "rb")
    except OSError as exc:
        raise ArchiveError(f"cannot open the archive: {exc}") from None
    with f:
        reader = _Reader(f)
        head = _header(reader)
        cid = head["customer_id"]
        expected = head["tables"]
        total = sum(v["rows"] for v in expected.values())
        async with db.tenant(cid) as conn:
            await tenant_data.prepare(conn)
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM customers WHERE id = $1)", cid):
                if not replace:
                    raise CustomerExists(f"customer {cid} already exists in this database (--replace overwrites it)")
                for t in reversed(TENANT_TABLES):  # the customers row itself is overwritten, not deleted
                    if t.name != "customers":
                        await tenant_data.delete_all(conn, t, cid)
            for name in tenant_data.DAY_PARTITIONED:
                days = expected[name].get("days")
                if days:
                    try:
                        first, last = dt.date.fromisoformat(days[0]), dt.date.fromisoformat(days[1])
                    except (TypeError, ValueError, IndexError):
                        raise ArchiveError(f"the archive's day range of {name} is not valid") from None
                    if not dt.timedelta(0) <= last - first <= dt.timedelta(days=3660):
                        raise ArchiveError(f"the archive's day range of {name} is not valid")
                    await tenant_data.ensure_partitions(conn, name, first, last)
            table: tenant_data.TenantTable | None = None
            cols: list[str] = []
            done = table_done = 0
            seen: list[str] = []
            while True:
                data = reader.raw()
                if data.startswith(b'{"rows":') and data.endswith(b"}\n"):
                    reader.digest.update(data)
                    if table is None:
                        raise ArchiveError("the archive is damaged: rows before any table")
                    try:
                        n = await tenant_data.upsert(conn, table, data[8:-2].decode(), cols)
                    except Exception as exc:
                        raise ArchiveError(
                            f"the archive is damaged or does not fit: rows of {table.name} refused: {exc}"
                        ) from None
                    table_done += n
                    done += n
                    if progress:
                        progress(table.name, table_done, done, total)
                    continue
                item = _json(data)
                if item.get("end") is True:
                    if item.get("sha256") != reader.digest.hexdigest():
                        raise ArchiveError("the archive is damaged: its sha256 does not match its content")
                    break
                reader.digest.update(data)
                tname = item.get("table")
                if not isinstance(tname, str) or tname not in by_name or tname in seen:
                    raise ArchiveError(f"the archive is damaged: unexpected table {tname!r}")
                seen.append(tname)
                table, table_done = by_name[tname], 0
                cols = await tenant_data.columns(conn, table)
            if seen != [t.name for t in TENANT_TABLES]:
                raise ArchiveError("the archive is damaged: tables are missing")
            bad = {}
            for t in TENANT_TABLES:
                got = await tenant_data.checksum(conn, t, cid, None)
                want = expected[t.name]
                if got["rows"] != want["rows"] or got["md5"] != want["md5"]:
                    bad[t.name] = {"archive": {k: want[k] for k in ("rows", "md5")}, "imported": got}
            if bad:
                raise ArchiveError(f"imported rows differ from the archive's checksums: {bad}")
            await _check_sealed(conn, cid)
            for t in TENANT_TABLES:
                await tenant_data.advance_serial(conn, t, cid)
    return {"customer_id": str(cid), "rows": done, "tables": {k: expected[k] for k in by_name}}
