"""Every stored credential, by table and column, and the two jobs that walk them: sealing what is
still plaintext (start-up, after migration 0120: SQL cannot encrypt with the application's key) and
re-sealing under the primary key (`webhost-sync rotate-key`).

A new credential column is added to SEALED_COLUMNS, sealed on write and opened on read in its
repository module (see storage/deployments.py), and guarded by a `... LIKE 'sealed:v1:%'` check in
its migration; tests/test_secrets_at_rest.py reads every text and jsonb column of every table for
plaintext credentials, so a forgotten one fails there.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from . import sealing
from .database import Database

log = structlog.get_logger("storage.sealed_columns")


@dataclass(frozen=True)
class SealedColumn:
    table: str
    column: str
    purpose: str  # the value of customer X is sealed for f"{purpose}/{X}"
    json_keys: tuple[str, ...] = ()  # a jsonb column: only these keys of it hold credentials

    def purpose_for(self, customer_id, key: str | None = None) -> str:
        return f"{self.purpose}{'.' + key if key else ''}/{customer_id}"


# Rows of these tables all have `id` and `customer_id` (the purpose binds a value to its customer).
SEALED_COLUMNS: tuple[SealedColumn, ...] = (
    SealedColumn("deployments", "database_url", "deployments.database_url"),
    SealedColumn("deployments", "provisioned_url", "deployments.provisioned_url"),
    # driver state: the dedicated server's superuser password (flyio, hetzner); a Redis URL if a driver keeps one
    SealedColumn("deployments", "config", "deployments.config", json_keys=("password", "redis_url")),
    SealedColumn("tenant_migrations", "source_url", "tenant_migrations.source_url"),
    SealedColumn("webhook_endpoints", "secret", "webhook_endpoints.secret"),  # storage/webhooks.py
)

_BY_NAME = {(c.table, c.column): c for c in SEALED_COLUMNS}


def column(table: str, name: str) -> SealedColumn:
    return _BY_NAME[(table, name)]


def seal_json(col: SealedColumn, customer_id, value: dict | None) -> dict | None:
    """`value` with its credential keys sealed (already sealed ones left as they are)."""
    if value is None:
        return None
    out = dict(value)
    for key in col.json_keys:
        if isinstance(out.get(key), str) and not sealing.is_sealed(out[key]):
            out[key] = sealing.seal(out[key], col.purpose_for(customer_id, key))
    return out


def open_json(col: SealedColumn, customer_id, value: dict | None) -> dict | None:
    if value is None:
        return None
    out = dict(value)
    for key in col.json_keys:
        if isinstance(out.get(key), str):
            out[key] = sealing.open(out[key], col.purpose_for(customer_id, key))
    return out


def _resealed(col: SealedColumn, customer_id, value, ring: sealing.Keyring, rotate: bool):
    """The new stored value, or None when this one needs no change."""

    def one(text: str, purpose: str) -> str | None:
        if not sealing.is_sealed(text):
            return ring.seal(text, purpose)
        if rotate and not ring.is_current(text):
            return ring.seal(ring.open(text, purpose), purpose)
        return None

    if not col.json_keys:
        return one(value, col.purpose_for(customer_id))
    out, changed = dict(value), False
    for key in col.json_keys:
        if isinstance(out.get(key), str):
            new = one(out[key], col.purpose_for(customer_id, key))
            if new is not None:
                out[key], changed = new, True
    return out if changed else None


def _needs_work(col: SealedColumn, ring: sealing.Keyring, rotate: bool, n: int) -> str:
    """SQL condition (parameter $n) selecting the rows whose `col` needs sealing (or re-sealing)."""
    c = f'"{col.column}"'
    if col.json_keys:
        return f"{c} ?| ${n}::text[]"
    return f"({c} IS NOT NULL AND {c} NOT LIKE ${n})"


def _needs_arg(col: SealedColumn, ring: sealing.Keyring, rotate: bool):
    if col.json_keys:
        return list(col.json_keys)
    return sealing.PREFIX + (ring.primary_id + ":%" if rotate else "%")


async def reseal(db: Database, *, rotate: bool) -> dict[str, int]:
    """Seal every plaintext credential (and with `rotate`, re-seal every value not sealed under the
    primary key) of `db`, one transaction per table, every sealed column of a row in one UPDATE (the
    checks of migration 0120 apply to the whole row); returns the values changed per table.column.
    Idempotent: a second run changes nothing; rows are locked while they are rewritten."""
    ring = sealing.keyring()
    counts = {f"{col.table}.{col.column}": 0 for col in SEALED_COLUMNS}
    for table in dict.fromkeys(col.table for col in SEALED_COLUMNS):
        cols = [col for col in SEALED_COLUMNS if col.table == table]
        todo = " OR ".join(_needs_work(col, ring, rotate, n) for n, col in enumerate(cols, 1))
        names = ", ".join(f'"{col.column}"' for col in cols)
        async with db.operator("seal_credentials", table=table, rotate=rotate) as conn:
            rows = await conn.fetch(
                f'SELECT id, customer_id, {names} FROM "{table}" WHERE {todo} FOR UPDATE',
                *(_needs_arg(col, ring, rotate) for col in cols),
            )
            for row in rows:
                changed = {}
                for col in cols:
                    value = row[col.column]
                    new = None if value is None else _resealed(col, row["customer_id"], value, ring, rotate)
                    if new is not None:
                        changed[col.column] = new
                        counts[f"{col.table}.{col.column}"] += 1
                if changed:
                    sets = ", ".join(f'"{name}" = ${n}' for n, name in enumerate(changed, 2))
                    await conn.execute(f'UPDATE "{table}" SET {sets} WHERE id = $1', row["id"], *changed.values())
    if any(counts.values()):
        log.info(
            "credentials_sealed",
            rotate=rotate,
            key_id=ring.primary_id,
            **{k.replace(".", "__"): v for k, v in counts.items()},
        )
    return counts


async def pending(db: Database) -> int:
    """Values not sealed under the primary key (what a rotation still has to do)."""
    ring = sealing.keyring()
    total = 0
    async with db.operator("sealed_credentials_pending") as conn:
        for col in SEALED_COLUMNS:
            t, c = f'"{col.table}"', f'"{col.column}"'
            if col.json_keys:
                values = [
                    v
                    for row in await conn.fetch(
                        f"SELECT {c} AS v FROM {t} WHERE {c} ?| $1::text[]", list(col.json_keys)
                    )
                    for k, v in row["v"].items()
                    if k in col.json_keys and isinstance(v, str)
                ]
                total += sum(1 for v in values if not ring.is_current(v))
            else:
                total += await conn.fetchval(
                    f"SELECT count(*) FROM {t} WHERE {c} IS NOT NULL AND {c} NOT LIKE $1",
                    sealing.PREFIX + ring.primary_id + ":%",
                )
    return total
