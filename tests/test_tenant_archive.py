"""`webhost-sync export-tenant` / `import-tenant` as real processes against real PostgreSQL: a
customer with 100,000 GPS positions (made by SQL, not the pipeline) exported and imported into an
empty freshly-migrated database; every tenant table's rows and every document equal (checksums);
a corrupted or truncated archive is refused and leaves nothing; an existing customer is refused
without --replace; sealed webhook secrets travel as ciphertext and open on the target."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from storage import sealing, tenant_data, webhooks

from .conftest import TEST_ENCRYPTION_KEY, TEST_SECRET
from .support import databases, tenants

EXE = str(Path(sys.executable).parent / "webhost-sync")


def _env(url: str, tmp_path: Path, **extra) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": url,
        "DATA_DIR": str(tmp_path / "data"),
        "SECRET_KEY": TEST_SECRET,
        "ENCRYPTION_KEY": TEST_ENCRYPTION_KEY,
        "LOG_LEVEL": "warning",
        **extra,
    }


def _run(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """Run the CLI under /usr/bin/time -v; returns the process and its elapsed time and peak RSS."""
    proc = subprocess.run(["/usr/bin/time", "-v", EXE, *args], env=env, capture_output=True, text=True, timeout=600)
    stats = {}
    for key, pattern in (
        ("elapsed", r"Elapsed \(wall clock\) time.*: (\S+)"),
        ("max_rss_kb", r"Maximum resident set size \(kbytes\): (\d+)"),
    ):
        m = re.search(pattern, proc.stderr)
        if m:
            stats[key] = m.group(1)
    return proc, stats


async def _add_webhook(url: str, cid) -> None:
    conn = await asyncpg.connect(url)
    try:
        await webhooks.insert_endpoint(
            conn, cid, url="https://example.com/hook", events=["trip.ended"], description="d", secret="whsec-abc"
        )
    finally:
        await conn.close()


async def _rows_of(url: str, cid) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        return {
            t.name: await conn.fetchval(f'SELECT count(*) FROM "{t.name}" WHERE "{t.owner}" = $1', cid)
            for t in tenant_data.TENANT_TABLES
        }
    finally:
        await conn.close()


@pytest.fixture
def target_url(pg_admin_url, migrated_template):
    """A second, empty, freshly-migrated database."""
    url = asyncio.run(migrated_template.clone())
    yield url
    asyncio.run(databases.drop_database(pg_admin_url, url))


@pytest.mark.slow
def test_export_then_import_100k_positions_every_table_and_document_equal(database_url, target_url, tmp_path):
    cid = asyncio.run(tenants.seed_customer(database_url, gps_rows=100_000))
    asyncio.run(_add_webhook(database_url, cid))
    before = asyncio.run(tenants.snapshot(database_url, cid))
    assert before["gps_positions"]["rows"] == 100_000
    assert before["webhook_endpoints"]["rows"] == 1
    archive = tmp_path / "acme.whsa"

    out, ex_stats = _run(["export-tenant", "--customer", str(cid), "--out", str(archive)], _env(database_url, tmp_path))
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr, "no progress bar when stderr is not a terminal"
    assert not archive.with_name(archive.name + ".partial").exists()
    with gzip.open(archive, "rt") as f:
        text = f.read()
    assert "whsec-abc" not in text, "sealed columns travel as ciphertext"
    assert "sealed:v1:" in text

    inp, im_stats = _run(["import-tenant", "--in", str(archive)], _env(target_url, tmp_path))
    assert inp.returncode == 0, inp.stderr
    after = asyncio.run(tenants.snapshot(target_url, cid))
    assert after == before  # every tenant table: row count and checksum
    for doc_table in ("doc_updates", "doc_snapshots"):  # the documents, byte for byte
        assert after[doc_table]["rows"] > 0 and after[doc_table] == before[doc_table]

    async def secret_opens():
        conn = await asyncpg.connect(target_url)
        try:
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM webhook_endpoints WHERE customer_id = $1", cid)]
            return await webhooks.secrets_of(conn, ids)
        finally:
            await conn.close()

    assert list(asyncio.run(secret_opens()).values()) == ["whsec-abc"]
    print(
        f"\n100k positions, archive {archive.stat().st_size / 1e6:.1f} MB: export {ex_stats}, import {im_stats}",
        file=sys.__stderr__,
    )

    # the customer now exists there: refused without --replace, replaced with it
    again, _ = _run(["import-tenant", "--in", str(archive)], _env(target_url, tmp_path))
    assert again.returncode == 1 and "already exists" in again.stderr and "--replace" in again.stderr
    replaced, _ = _run(["import-tenant", "--in", str(archive), "--replace"], _env(target_url, tmp_path))
    assert replaced.returncode == 0, replaced.stderr
    assert asyncio.run(tenants.snapshot(target_url, cid)) == before


def _rewrite(archive: Path, dest: Path, change) -> None:
    with gzip.open(archive, "rb") as f:
        data = f.read()
    with gzip.open(dest, "wb") as f:
        f.write(change(data))


def test_corrupted_or_truncated_archive_is_refused_and_nothing_stays(database_url, target_url, tmp_path):
    cid = asyncio.run(tenants.seed_customer(database_url, gps_rows=3000))
    archive = tmp_path / "a.whsa"
    out, _ = _run(["export-tenant", "--customer", str(cid), "--out", str(archive)], _env(database_url, tmp_path))
    assert out.returncode == 0, out.stderr
    empty = {t.name: 0 for t in tenant_data.TENANT_TABLES}

    flipped = tmp_path / "flipped.whsa"  # one value changed inside a row: valid gzip, valid JSON
    _rewrite(archive, flipped, lambda d: d.replace(b'"lat": 52.5', b'"lat": 52.6', 1))
    assert open(archive, "rb").read() != open(flipped, "rb").read()
    truncated = tmp_path / "truncated.whsa"  # ends before its checksum line (after most rows)
    _rewrite(archive, truncated, lambda d: d[: d.rindex(b"\n", 0, len(d) - 1) + 1])
    garbage = tmp_path / "garbage.whsa"  # damaged compressed bytes
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    garbage.write_bytes(bytes(raw))

    for bad, expect in (
        (flipped, "sha256 does not match"),
        (truncated, "truncated"),
        (garbage, "damaged"),
    ):
        proc, _ = _run(["import-tenant", "--in", str(bad)], _env(target_url, tmp_path))
        assert proc.returncode == 1, (bad.name, proc.stderr)
        assert "refused" in proc.stderr and expect in proc.stderr, (bad.name, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert asyncio.run(_rows_of(target_url, cid)) == empty, f"{bad.name}: rows stayed behind"

    ok, _ = _run(["import-tenant", "--in", str(archive)], _env(target_url, tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert asyncio.run(tenants.snapshot(target_url, cid)) == asyncio.run(tenants.snapshot(database_url, cid))


def test_export_of_an_unknown_customer_is_refused(database_url, tmp_path):
    out = tmp_path / "none.whsa"
    proc, _ = _run(
        ["export-tenant", "--customer", "00000000-0000-0000-0000-000000000001", "--out", str(out)],
        _env(database_url, tmp_path),
    )
    assert proc.returncode == 1 and "not found" in proc.stderr
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_checksum_in_the_database_equals_the_digest_of_row_hashes(database_url):
    cid = asyncio.run(tenants.seed_customer(database_url, gps_rows=500))

    async def both():
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                await tenant_data.prepare(conn)
                return [
                    (
                        await tenant_data.checksum(conn, t, cid, None),
                        tenant_data.digest(await tenant_data.row_hashes(conn, t, cid, None)),
                    )
                    for t in tenant_data.TENANT_TABLES
                ]
        finally:
            await conn.close()

    pairs = asyncio.run(both())
    assert all(a == b for a, b in pairs), pairs
    assert any(a["rows"] > 1 for a, _ in pairs)


def test_sealed_values_need_the_exporting_key_and_database_url_picks_the_target(database_url, target_url, tmp_path):
    """Webhook secrets travel sealed: a node with another ENCRYPTION_KEY refuses the archive (and
    keeps nothing); with the exporting key among ENCRYPTION_OLD_KEYS it imports and they open.
    --database-url loads into that database (a dedicated one), not DATABASE_URL's."""
    cid = asyncio.run(tenants.seed_customer(database_url, gps_rows=200))
    asyncio.run(_add_webhook(database_url, cid))
    archive = tmp_path / "k.whsa"
    out, _ = _run(["export-tenant", "--customer", str(cid), "--out", str(archive)], _env(database_url, tmp_path))
    assert out.returncode == 0, out.stderr
    other_key = sealing.new_key()
    to_target = ["import-tenant", "--in", str(archive), "--database-url", target_url]
    refused, _ = _run(to_target, _env(database_url, tmp_path, ENCRYPTION_KEY=other_key))
    assert refused.returncode == 1, refused.stderr
    assert "webhook_endpoints.secret" in refused.stderr and "ENCRYPTION_KEY" in refused.stderr
    assert asyncio.run(_rows_of(target_url, cid)) == {t.name: 0 for t in tenant_data.TENANT_TABLES}
    ok, _ = _run(
        to_target, _env(database_url, tmp_path, ENCRYPTION_KEY=other_key, ENCRYPTION_OLD_KEYS=TEST_ENCRYPTION_KEY)
    )
    assert ok.returncode == 0, ok.stderr
    assert asyncio.run(tenants.snapshot(target_url, cid)) == asyncio.run(tenants.snapshot(database_url, cid))


def test_progress_bar_only_on_a_terminal(database_url, tmp_path):
    cid = asyncio.run(tenants.seed_customer(database_url, gps_rows=5000))
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [EXE, "export-tenant", "--customer", str(cid), "--out", str(tmp_path / "p.whsa")],
        env=_env(database_url, tmp_path),
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    assert proc.stdout is not None and b"exported customer" in proc.stdout.read()
    assert b"\r\x1b[K[" in seen and b"rows" in seen, seen[-500:]


def test_an_archive_whose_rows_name_another_customer_cannot_touch_it(database_url, tmp_path):
    """The archive is not trusted: rows are written in the header customer's tenant scope, so a
    crafted archive (valid sha256) carrying another customer's id in its rows is refused by
    row-level security, and that other customer's rows stay as they were."""
    victim = asyncio.run(tenants.seed_customer(database_url, slug="victim", gps_rows=100))
    attacker = asyncio.run(tenants.seed_customer(database_url, slug="attacker", gps_rows=100))
    archive = tmp_path / "a.whsa"
    out, _ = _run(["export-tenant", "--customer", str(attacker), "--out", str(archive)], _env(database_url, tmp_path))
    assert out.returncode == 0, out.stderr
    with gzip.open(archive, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    assert lines[1] == b'{"table": "customers"}\n'
    body = [  # the customers row stays the attacker's; every other table's rows name the victim
        line.replace(str(attacker).encode(), str(victim).encode()) if i > 2 and line.startswith(b'{"rows":') else line
        for i, line in enumerate(lines[:-1])
    ]
    digest = hashlib.sha256(b"".join(body)).hexdigest()
    crafted = tmp_path / "crafted.whsa"
    with gzip.open(crafted, "wb") as f:
        f.write(b"".join(body) + json.dumps({"end": True, "rows": 0, "sha256": digest}).encode() + b"\n")
    before = asyncio.run(tenants.snapshot(database_url, victim))
    proc, _ = _run(["import-tenant", "--in", str(crafted), "--replace"], _env(database_url, tmp_path))
    assert proc.returncode == 1 and "refused" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "row-level security" in proc.stderr
    assert asyncio.run(tenants.snapshot(database_url, victim)) == before
    assert asyncio.run(_rows_of(database_url, attacker))["gps_positions"] == 100  # --replace rolled back too


def test_export_refuses_while_a_table_with_customer_data_is_unclassified(database_url, tmp_path):
    """A new table with a customer_id that is in neither list would silently stay behind: refused."""
    cid = asyncio.run(tenants.seed_customer(database_url, gps_rows=10))

    async def add_table():
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("CREATE TABLE forgotten (customer_id uuid NOT NULL, note text)")
        finally:
            await conn.close()

    asyncio.run(add_table())
    out = tmp_path / "f.whsa"
    proc, _ = _run(["export-tenant", "--customer", str(cid), "--out", str(out)], _env(database_url, tmp_path))
    assert proc.returncode == 1 and "not classified" in proc.stderr and "forgotten" in proc.stderr, proc.stderr
    assert not out.exists()
