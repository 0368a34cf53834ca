"""The tables that hold a customer's data and move with it between databases, and the SQL a move
needs: stream rows out, upsert them in, per-row hashes for the catch-up diff, per-table checksums.

Rows travel as `to_jsonb(row)` text and come back through `jsonb_populate_recordset`, so one code
path serves every table and every column type (bytea as hex, floats in their shortest exact form,
timestamps to the microsecond). Every transaction that reads or compares runs with TimeZone=UTC so
both databases render timestamps alike; row hashes are md5 of the row's text form (both databases
run the same migrations, so columns are in the same order). COPY cannot be used: it is refused on tables with
row-level security, and the application role is always subject to it.

Identifiers come from the fixed list below and from the catalog, never from input.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class TenantTable:
    name: str
    key: tuple[str, ...]  # primary key (the ON CONFLICT target)
    owner: str = "customer_id"  # the column holding the customer id
    time: str | None = None  # retention applies to this column on a downgrade
    serial: str | None = None  # serial column whose sequence the target must move past
    control_plane: bool = False  # also a control-plane table: copied to a dedicated database only


# In foreign-key order (parents first); deletes run in reverse.
TENANT_TABLES: tuple[TenantTable, ...] = (
    TenantTable("customers", ("id",), owner="id", control_plane=True),
    TenantTable("customer_users", ("id",)),
    TenantTable("customer_user_sessions", ("id",)),  # the dispatcher app's sign-ins (storage.user_sessions)
    TenantTable("vehicles", ("id",)),
    TenantTable("drivers", ("id",)),
    TenantTable("geofences", ("id",)),
    TenantTable("geofence_events", ("customer_id", "id"), time="time", serial="id"),
    TenantTable("routes", ("id",)),
    TenantTable("vehicle_positions_latest", ("customer_id", "vehicle_id")),
    TenantTable("gps_positions", ("customer_id", "vehicle_id", "time"), time="time"),
    TenantTable("usage_metrics", ("customer_id", "metric", "time"), time="time"),
    TenantTable("doc_updates", ("customer_id", "doc", "seq"), serial="seq"),
    TenantTable("doc_snapshots", ("customer_id", "doc")),
    TenantTable("track_progress", ("customer_id", "doc")),  # moves with its documents and rows
    TenantTable("tracking_settings", ("customer_id",)),
    TenantTable("fleet_events", ("customer_id", "id"), time="time", serial="id"),
    TenantTable("trips", ("customer_id", "vehicle_id", "start_time"), time="start_time"),
    TenantTable("stops", ("customer_id", "vehicle_id", "start_time"), time="start_time"),
    TenantTable("motion_state", ("customer_id", "vehicle_id")),
    TenantTable("webhook_endpoints", ("id",)),
    TenantTable("webhook_outbox", ("id",), serial="seq"),  # pending deliveries move with the customer
    TenantTable("webhook_attempts", ("id",)),
)

# Tables with a customer_id that stay in the shared database whatever the customer's mode.
CONTROL_PLANE_TABLES = frozenset(
    {
        "customers",
        "api_keys",
        "subscriptions",
        "billing_accounts",  # the Stripe ids, push outbox and reported state (migration 0140)
        "stripe_events",  # every Stripe webhook event received, once
        "deployments",
        "infrastructure_events",
        "recommendations",
        "tenant_migrations",
    }
)

DAY_PARTITIONED = ("gps_positions", "usage_metrics")


def _q(name: str) -> str:
    """Quote an identifier that came from TENANT_TABLES or the catalog."""
    return '"' + name.replace('"', '""') + '"'


def _where(t: TenantTable, with_cutoff: bool) -> str:
    clause = f"{_q(t.owner)} = $1"
    if with_cutoff and t.time:
        clause += f" AND ($2::timestamptz IS NULL OR {_q(t.time)} >= $2)"
    return clause


def _args(t: TenantTable, customer_id, cutoff) -> tuple:
    return (customer_id, cutoff) if t.time else (customer_id,)


def _key_expr(t: TenantTable, alias: str = "t") -> str:
    return "ROW(" + ", ".join(f"{alias}.{_q(c)}" for c in t.key) + ")::text"


async def prepare(conn: asyncpg.Connection) -> None:
    """Render values the same way on both databases (call once per transaction)."""
    await conn.execute("SELECT set_config('TimeZone', 'UTC', true)")


async def tables_with_customer_id(conn: asyncpg.Connection) -> set[str]:
    """Every ordinary or partitioned table of the schema that carries a customer_id column
    (partitions excluded): used to prove every such table is classified."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "AND a.attname = 'customer_id' AND NOT a.attisdropped"
    )
    return {r["relname"] for r in rows}


async def columns(conn: asyncpg.Connection, t: TenantTable) -> list[str]:
    rows = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum",
        f"public.{t.name}",
    )
    return [r["attname"] for r in rows]


async def count_before(conn: asyncpg.Connection, t: TenantTable, customer_id, cutoff: dt.datetime) -> int:
    """Rows older than `cutoff` (the ones a downgrade leaves behind)."""
    if not t.time:
        return 0
    return await conn.fetchval(
        f"SELECT count(*) FROM {_q(t.name)} WHERE {_q(t.owner)} = $1 AND {_q(t.time)} < $2", customer_id, cutoff
    )


async def stream(
    conn: asyncpg.Connection, t: TenantTable, customer_id, cutoff: dt.datetime | None, chunk: int
) -> AsyncIterator[tuple[str, int]]:
    """(JSON array text, row count) chunks of the customer's rows; needs an open transaction."""
    batch: list[str] = []
    query = f"SELECT to_jsonb(t)::text AS j FROM {_q(t.name)} t WHERE {_where(t, True)}"
    async for rec in conn.cursor(query, *_args(t, customer_id, cutoff), prefetch=min(chunk, 5000)):
        batch.append(rec["j"])
        if len(batch) >= chunk:
            yield "[" + ",".join(batch) + "]", len(batch)
            batch = []
    if batch:
        yield "[" + ",".join(batch) + "]", len(batch)


async def upsert(conn: asyncpg.Connection, t: TenantTable, rows_json: str, cols: list[str]) -> int:
    """Insert the rows; a row whose key exists is overwritten (so a re-run never duplicates)."""
    others = [c for c in cols if c not in t.key]
    action = ("DO UPDATE SET " + ", ".join(f"{_q(c)} = EXCLUDED.{_q(c)}" for c in others)) if others else "DO NOTHING"
    col_list = ", ".join(_q(c) for c in cols)
    status = await conn.execute(
        f"INSERT INTO {_q(t.name)} ({col_list}) SELECT {col_list} FROM jsonb_populate_recordset(NULL::{_q(t.name)}, "
        f"$1::text::jsonb) ON CONFLICT ({', '.join(_q(c) for c in t.key)}) {action}",
        rows_json,
    )
    return int(status.rsplit(" ", 1)[-1])


async def row_hashes(
    conn: asyncpg.Connection, t: TenantTable, customer_id, cutoff: dt.datetime | None
) -> dict[str, str]:
    rows = await conn.fetch(
        f"SELECT {_key_expr(t)} AS k, md5(t::text) AS h FROM {_q(t.name)} t WHERE {_where(t, True)}",
        *_args(t, customer_id, cutoff),
    )
    return {r["k"]: r["h"] for r in rows}


async def hashes_by_key(conn: asyncpg.Connection, t: TenantTable, customer_id, keys: list[str]) -> dict[str, str]:
    rows = await conn.fetch(
        f"SELECT {_key_expr(t)} AS k, md5(t::text) AS h FROM {_q(t.name)} t "
        f"WHERE {_q(t.owner)} = $1 AND {_key_expr(t)} = ANY($2::text[])",
        customer_id,
        keys,
    )
    return {r["k"]: r["h"] for r in rows}


async def count(conn: asyncpg.Connection, t: TenantTable, customer_id, cutoff: dt.datetime | None) -> int:
    return await conn.fetchval(
        f"SELECT count(*) FROM {_q(t.name)} t WHERE {_where(t, True)}", *_args(t, customer_id, cutoff)
    )


async def rows_by_key(conn: asyncpg.Connection, t: TenantTable, customer_id, keys: list[str]) -> str:
    return await conn.fetchval(
        f"SELECT coalesce(json_agg(to_jsonb(t)), '[]')::text FROM {_q(t.name)} t "
        f"WHERE {_q(t.owner)} = $1 AND {_key_expr(t)} = ANY($2::text[])",
        customer_id,
        keys,
    )


async def delete_by_key(conn: asyncpg.Connection, t: TenantTable, customer_id, keys: list[str]) -> int:
    status = await conn.execute(
        f"DELETE FROM {_q(t.name)} t WHERE {_q(t.owner)} = $1 AND {_key_expr(t)} = ANY($2::text[])", customer_id, keys
    )
    return int(status.rsplit(" ", 1)[-1])


async def delete_all(conn: asyncpg.Connection, t: TenantTable, customer_id) -> int:
    status = await conn.execute(f"DELETE FROM {_q(t.name)} WHERE {_q(t.owner)} = $1", customer_id)
    return int(status.rsplit(" ", 1)[-1])


async def checksum(conn: asyncpg.Connection, t: TenantTable, customer_id, cutoff: dt.datetime | None) -> dict:
    """Row count and an md5 over every row's md5 in key order: equal on both sides iff the rows are.
    The same value as `digest(row_hashes(...))` (keys sorted bytewise, as Python sorts code points),
    computed in the database so no per-row data comes to the process, however many rows there are."""
    row = await conn.fetchrow(
        f"SELECT count(*) AS n, coalesce(md5(string_agg(md5(t::text), '' ORDER BY {_key_expr(t)} COLLATE \"C\")), '')"
        f" AS m FROM {_q(t.name)} t WHERE {_where(t, True)}",
        *_args(t, customer_id, cutoff),
    )
    return {"rows": row["n"], "md5": row["m"]}


def digest(hashes: dict[str, str]) -> dict:
    """The per-table checksum from per-row hashes (key order), computed the same way for both sides."""
    import hashlib

    h = hashlib.md5()
    for key in sorted(hashes):
        h.update(hashes[key].encode())
    return {"rows": len(hashes), "md5": h.hexdigest() if hashes else ""}


async def day_range(
    conn: asyncpg.Connection, t: TenantTable, customer_id, cutoff: dt.datetime | None
) -> tuple[dt.date, dt.date] | None:
    assert t.time is not None, "day_range is for the day-partitioned tables, which all have a time column"
    row = await conn.fetchrow(
        f"SELECT min({_q(t.time)})::date AS lo, max({_q(t.time)})::date AS hi"
        f" FROM {_q(t.name)} WHERE {_where(t, True)}",
        *_args(t, customer_id, cutoff),
    )
    return None if row["lo"] is None else (row["lo"], row["hi"])


async def ensure_partitions(conn: asyncpg.Connection, table: str, first: dt.date, last: dt.date) -> int:
    return await conn.fetchval("SELECT webhost_ensure_day_partitions($1, $2, $3)", table, first, last)


async def advance_serial(conn: asyncpg.Connection, t: TenantTable, customer_id) -> None:
    if not t.serial:
        return
    top = await conn.fetchval(f"SELECT max({_q(t.serial)}) FROM {_q(t.name)} WHERE {_q(t.owner)} = $1", customer_id)
    if top is not None:
        await conn.fetchval("SELECT webhost_advance_sequence($1, $2, $3)", t.name, t.serial, top)
