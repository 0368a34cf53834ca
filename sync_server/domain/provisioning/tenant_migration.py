"""Live tenant migration: move one customer's data between the shared database and a dedicated one.

1. bulk copy  every tenant table's rows (and, into a dedicated database, a copy of the customers
              row) while the customer keeps working on the source;
2. catch-up   a hash diff per table copies what changed meanwhile (still live);
3. pause      the customer's sync rooms flush and buffer (runtime.rooms.paused) and the registry
              holds new lookups for this customer, on this node and, with Redis, on every other
              live node, each of which confirms it (cluster_pause; else the migration fails); a
              last diff; verify row count + checksum per table on both sides; one shared-database
              transaction records the switch; the registry routes the customer to the target; the
              pause ends (every node reloads its routes first) and buffered writes land on the
              target. The pause is measured and recorded (tenant_migrations.pause_ms).
4. clean-up   after MIGRATION_CLEANUP_GRACE_SECONDS the source copy is deleted (rows in the
              shared database, or the dedicated database itself via its driver).

Nothing is routed until verification passed, so any failure leaves the customer served by the
source, the migration `failed` with its error, and every step in infrastructure_events. A downgrade
to multi_tenant copies only rows inside the target plan's retention; how many rows stay behind is
computed and recorded before the copy starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from typing import Any

import asyncpg
import structlog

from storage import Database, tenant_data
from storage import deployments as store
from storage.tenant_data import TENANT_TABLES, TenantTable
from sync_server.domain.provisioning import cluster_pause, deployments, route_changes

log = structlog.get_logger("sync_server.tenant_migration")

CHUNK_ROWS = 5000


class MigrationError(deployments.DeploymentError):
    pass


def _tables(to_mode: str) -> list[TenantTable]:
    """What moves: into a dedicated database also the customers row; into the shared one not."""
    return [t for t in TENANT_TABLES if to_mode == "single_tenant" or not t.control_plane]


async def unclassified_tables(db: Database) -> set[str]:
    """Tables with a customer_id that are neither moved nor control plane: a move would lose them."""
    async with db.platform() as conn:
        found = await tenant_data.tables_with_customer_id(conn)
    return found - {t.name for t in TENANT_TABLES} - tenant_data.CONTROL_PLANE_TABLES


@contextlib.asynccontextmanager
async def writes_paused(rt, customer_id):
    """The customer's writes wait while inside, on this node and (with Redis) on every other live
    node (cluster_pause): sync rooms flush and buffer, registry lookups for the customer wait for
    the new route. Yields the cluster pause; its `check()` goes inside the switch transaction."""
    async with cluster_pause.everywhere(rt, customer_id) as pause:
        yield pause


def _serving(dep) -> bool:
    return dep is not None and dep["mode"] == "single_tenant" and dep["database_url"] is not None


async def plan_move(rt, customer_id, to_mode: str, *, plan: str | None = None) -> dict:
    """What a move would do (also the dry run): from/to, the deployment, and rows left behind."""
    profile = await store.customer_profile(rt.db, customer_id)
    if profile is None:
        raise MigrationError(404, "not_found", "customer not found")
    dep = await store.current(rt.db, customer_id)
    from_mode = "single_tenant" if _serving(dep) else "multi_tenant"
    if from_mode == to_mode:
        raise MigrationError(409, "already_there", f"customer is already {to_mode}")
    if dep is not None and dep["status"] in ("provisioning", "migrating"):
        raise MigrationError(409, "deployment_busy", f"the customer's deployment is {dep['status']}")
    missing = await unclassified_tables(rt.db)
    if missing:
        raise MigrationError(
            409,
            "unclassified_tables",
            "tables with customer data are not classified as tenant data or control plane; a move would lose them",
            {"tables": sorted(missing)},
        )
    out: dict[str, Any] = {
        "customer_id": str(customer_id),
        "from": from_mode,
        "to": to_mode,
        "deployment_id": str(dep["id"]) if dep else None,
        "plan": None,
        "dropping": {},
    }
    if to_mode == "multi_tenant":
        plan = plan or profile["plan"] or "hobby"
        days = await store.plan_retention_days(rt.db, plan)
        if days is None:
            raise MigrationError(422, "validation_error", f"unknown plan {plan!r}", {"plan": "unknown plan"})
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
        source = await rt.registry.for_customer(customer_id)
        async with source.tenant(customer_id) as conn:
            dropping = {
                t.name: n
                for t in _tables(to_mode)
                if (n := await tenant_data.count_before(conn, t, customer_id, cutoff))
            }
        out.update(plan=plan, retention_days=days, cutoff=cutoff.isoformat(), dropping=dropping)
    return out


async def start(
    rt, customer_id, to_mode: str, *, infrastructure: str = "local", plan: str | None = None, region: str | None = None
) -> dict:
    """Validate, record the migration (with the rows it will leave behind) and run it in the background."""
    move = await plan_move(rt, customer_id, to_mode, plan=plan)
    dep = await store.current(rt.db, customer_id)
    if (
        to_mode == "single_tenant"
        and dep is not None
        and (dep["mode"] != "single_tenant" or dep["provisioned_url"] is None)
    ):
        # a multi_tenant record (or a cloud deployment without a reachable database) is replaced
        if dep["mode"] == "multi_tenant":
            await deployments.destroy(rt, dict(dep))
            await store.update(rt.db, dep["id"], customer_id, status="decommissioned")
            dep = None
        else:
            raise MigrationError(409, "no_database", "the customer's deployment has no database to move into")
    # to multi_tenant means from a serving dedicated deployment (plan_move), so dep is set
    source_url = dep["database_url"] if to_mode == "multi_tenant" and dep is not None else None
    try:
        mig = dict(
            await store.insert_migration(
                rt.db,
                customer_id=customer_id,
                deployment_id=dep["id"] if dep else None,
                from_mode=move["from"],
                to_mode=to_mode,
                plan=move["plan"],
                dropping=move["dropping"],
                source_url=source_url,
            )
        )
    except asyncpg.UniqueViolationError:
        raise MigrationError(409, "migration_running", "a migration of this customer is already running") from None
    if move["dropping"]:
        await _event(
            rt, mig, "retention", "progress", plan=move["plan"], dropping=move["dropping"], cutoff=move["cutoff"]
        )
    rt.spawn(
        run(rt, mig, infrastructure=infrastructure, region=region, cutoff=move.get("cutoff")),
        f"tenant_migration:{mig['id']}",
    )
    return mig


async def _event(rt, mig: dict, step: str, status: str, error: str | None = None, **data) -> None:
    await store.record_event(
        rt.db,
        customer_id=mig["customer_id"],
        deployment_id=mig.get("deployment_id"),
        step=f"migration_{step}",
        status=status,
        data={"migration_id": str(mig["id"]), **data},
        error=error,
    )


async def run(
    rt, mig: dict, *, infrastructure: str = "local", region: str | None = None, cutoff: str | None = None
) -> dict:
    cid = mig["customer_id"]
    to_mode = mig["to_mode"]
    cutoff_at = dt.datetime.fromisoformat(cutoff) if cutoff else None
    bind = structlog.contextvars.bound_contextvars(customer_id=str(cid), migration_id=str(mig["id"]))
    dep = None
    with bind:
        await _event(rt, mig, "start", "started", source=mig["from_mode"], target=to_mode)
        try:
            dep = await _target_deployment(rt, mig, infrastructure, region)
            mig["deployment_id"] = dep["id"]
            await store.update(rt.db, dep["id"], cid, status="migrating")
            if to_mode == "single_tenant":
                source = await rt.registry.for_customer(cid)
                async with rt.registry.standalone(dep["provisioned_url"], name=f"target:{cid}") as target:
                    result = await _move(rt, mig, dep, source, target, cutoff_at)
            else:
                source = await rt.registry.for_customer(cid)
                result = await _move(rt, mig, dep, source, rt.registry.shared, cutoff_at)
        except Exception as exc:
            error = str(exc) or type(exc).__name__
            log.warning("tenant_migration_failed", error=error)
            await _event(rt, mig, "finish", "failed", error=error)
            await store.set_migration_status(rt.db, cid, mig["id"], status="failed", error=error)
            if dep is not None:
                # still serving (a downgrade that failed) -> active again; a new target -> failed
                back = "active" if dep["database_url"] is not None else "failed"
                await store.update(rt.db, dep["id"], cid, status=back, error=None if back == "active" else error)
            return {**mig, "status": "failed", "error": error}
    rt.spawn(cleanup_when_due(rt, {**mig, **result}), f"tenant_cleanup:{mig['id']}")
    return {**mig, **result}


async def _target_deployment(rt, mig: dict, infrastructure: str, region: str | None) -> dict:
    cid = mig["customer_id"]
    if mig["deployment_id"] is not None:
        dep = await store.get(rt.db, mig["deployment_id"])
        if dep is None:
            raise MigrationError(409, "deployment_gone", "the migration's target deployment no longer exists")
        return dict(dep)
    await _event(rt, mig, "provision", "started", infrastructure=infrastructure)
    dep = await deployments.create_inline(rt, customer_id=cid, infrastructure=infrastructure, region=region)
    async with rt.db.tenant(cid) as conn:
        await conn.execute("UPDATE tenant_migrations SET deployment_id = $2 WHERE id = $1", mig["id"], dep["id"])
    if dep["status"] != "active":
        raise MigrationError(502, "provision_failed", f"provisioning the dedicated database failed: {dep['error']}")
    await _event(rt, mig, "provision", "succeeded", deployment_id=str(dep["id"]))
    return dep


async def _counts(db: Database, cid, tables: list[TenantTable], cutoff) -> dict[str, int]:
    async with db.tenant(cid) as conn:
        return {t.name: (await tenant_data.checksum(conn, t, cid, cutoff))["rows"] for t in tables}


async def _ensure_partitions(source: Database, target: Database, cid, tables, cutoff) -> None:
    async with source.tenant(cid) as conn:
        ranges = {
            t.name: await tenant_data.day_range(conn, t, cid, cutoff)
            for t in tables
            if t.name in tenant_data.DAY_PARTITIONED
        }
    async with target.platform() as conn:
        for name, span in ranges.items():
            if span is not None:
                await tenant_data.ensure_partitions(conn, name, *span)


async def _bulk_copy(rt, mig, source: Database, target: Database, cid, tables, cutoff) -> None:
    totals = await _counts(source, cid, tables, cutoff)
    overall_total, overall_done = sum(totals.values()), 0
    await _event(rt, mig, "copy", "started", tables=totals, total=overall_total)
    async with target.tenant(cid) as conn:  # leftovers of an earlier stay (e.g. before its clean-up ran)
        for t in reversed(tables):
            if not (t.control_plane and target is rt.registry.shared):
                await tenant_data.delete_all(conn, t, cid)
    await _ensure_partitions(source, target, cid, tables, cutoff)
    for t in tables:
        async with source.tenant(cid) as src, target.tenant(cid) as dst:
            await tenant_data.prepare(src)
            cols = await tenant_data.columns(dst, t)
            done = 0
            async for rows_json, n in tenant_data.stream(src, t, cid, cutoff, CHUNK_ROWS):
                await tenant_data.upsert(dst, t, rows_json, cols)
                done += n
                overall_done += n
                await _event(
                    rt,
                    mig,
                    "copy",
                    "progress",
                    table=t.name,
                    rows=done,
                    table_total=totals[t.name],
                    done=overall_done,
                    total=overall_total,
                )
    # rows may come and go while copying (live writes, compaction); the catch-up settles them
    await _event(rt, mig, "copy", "succeeded", done=overall_done, total=overall_done, counted_at_start=overall_total)


async def _hashes(db: Database, cid, tables, cutoff) -> dict[str, dict[str, str]]:
    async with db.tenant(cid) as conn:
        await tenant_data.prepare(conn)
        return {t.name: await tenant_data.row_hashes(conn, t, cid, cutoff) for t in tables}


async def _catch_up(
    source: Database, target: Database, cid, tables, cutoff, *, verify: bool = False
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Make target equal to source for this customer with a per-row hash diff (both sides read at
    once). With verify, the result is proven row for row without a second full scan: every key
    whose hashes matched was equal in the same read; every rewritten row is read back from the
    target and must hash like the source's; and the target's row count must equal the source's.
    Returns (what changed, per-table row count + checksum of the source)."""
    await _ensure_partitions(source, target, cid, tables, cutoff)
    theirs, ours = await asyncio.gather(_hashes(source, cid, tables, cutoff), _hashes(target, cid, tables, cutoff))
    changes: dict[str, dict] = {}
    rewritten: dict[str, list[str]] = {}
    async with source.tenant(cid) as src, target.tenant(cid) as dst:
        await tenant_data.prepare(src)
        await tenant_data.prepare(dst)
        gone: dict[str, list[str]] = {}
        for t in tables:
            changed = rewritten[t.name] = [k for k, h in theirs[t.name].items() if ours[t.name].get(k) != h]
            gone[t.name] = [k for k in ours[t.name] if k not in theirs[t.name]]
            if changed:
                rows = await tenant_data.rows_by_key(src, t, cid, changed)
                await tenant_data.upsert(dst, t, rows, await tenant_data.columns(dst, t))
            if changed or gone[t.name]:
                changes[t.name] = {"upserted": len(changed), "deleted": len(gone[t.name])}
        for t in reversed(tables):
            if gone[t.name]:
                await tenant_data.delete_by_key(dst, t, cid, gone[t.name])
        for t in tables:
            await tenant_data.advance_serial(dst, t, cid)
    report = {name: tenant_data.digest(h) for name, h in theirs.items()}
    if verify:
        bad = {}
        async with target.tenant(cid) as dst:
            await tenant_data.prepare(dst)
            for t in tables:
                keys = rewritten[t.name]
                back = await tenant_data.hashes_by_key(dst, t, cid, keys) if keys else {}
                target_rows = await tenant_data.count(dst, t, cid, cutoff)
                if target_rows != report[t.name]["rows"] or any(back.get(k) != theirs[t.name][k] for k in keys):
                    bad[t.name] = {"source_rows": report[t.name]["rows"], "target_rows": target_rows}
        if bad:
            raise MigrationError(500, "verification_failed", f"source and target differ: {bad}")
    return changes, report


async def _move(rt, mig, dep, source: Database, target: Database, cutoff) -> dict:
    cid = mig["customer_id"]
    tables = _tables(mig["to_mode"])
    await _bulk_copy(rt, mig, source, target, cid, tables, cutoff)
    changes, _ = await _catch_up(source, target, cid, tables, cutoff)
    await _event(rt, mig, "catch_up", "succeeded", changes=changes)
    grace = dt.timedelta(seconds=rt.settings.migration_cleanup_grace)
    to_single = mig["to_mode"] == "single_tenant"
    new_url = dep["provisioned_url"] if to_single else None
    started = time.perf_counter()
    async with writes_paused(rt, cid) as pause:
        flushed = time.perf_counter()
        final, report = await _catch_up(source, target, cid, tables, cutoff, verify=True)
        verified = time.perf_counter()
        pause_ms = (time.perf_counter() - started) * 1000
        async with rt.db.tenant(cid) as conn:  # the switch: one transaction in the control plane
            await conn.execute(
                "UPDATE deployments SET database_url = $2, status = 'active', updated_at = now() WHERE id = $1",
                dep["id"],
                store.seal_database_url(cid, new_url),
            )
            await store.set_customer_mode(conn, cid, mig["to_mode"])
            cleanup_after = await conn.fetchval("SELECT now() + $1::interval", grace)
            await store.finish_migration(
                conn, mig["id"], status="switched", tables=report, pause_ms=pause_ms, cleanup_after=cleanup_after
            )
            await pause.check()  # every other node still holds (and will until this commits), or no switch
        await rt.registry.route(cid, new_url)
        pause_ms = (time.perf_counter() - started) * 1000
    await route_changes.announce(rt, cid)  # the other nodes (with Redis) reload their routes
    async with rt.db.tenant(cid) as conn:
        await conn.execute("UPDATE tenant_migrations SET pause_ms = $2 WHERE id = $1", mig["id"], pause_ms)
    await _event(
        rt,
        mig,
        "switch",
        "succeeded",
        pause_ms=round(pause_ms, 1),
        flush_ms=round((flushed - started) * 1000, 1),
        catch_up_and_verify_ms=round((verified - flushed) * 1000, 1),
        final_changes=final,
        tables=report,
    )
    log.info("tenant_migrated", to=mig["to_mode"], pause_ms=round(pause_ms, 1))
    return {
        "status": "switched",
        "tables": report,
        "pause_ms": pause_ms,
        "cleanup_after": cleanup_after,
        "deployment_id": dep["id"],
    }


async def cleanup_when_due(rt, mig: dict) -> None:
    delay = (mig["cleanup_after"] - dt.datetime.now(dt.UTC)).total_seconds()
    if delay > 0:
        await asyncio.sleep(delay)
    await cleanup(rt, mig)


async def cleanup(rt, mig: dict) -> None:
    """Remove the source copy, unless the customer has since moved back onto it."""
    cid = mig["customer_id"]
    dep = await store.current(rt.db, cid)
    try:
        if mig["to_mode"] == "single_tenant":
            if _serving(dep):  # still on its dedicated database: the shared rows are stale
                async with rt.db.tenant(cid) as conn:
                    deleted = {
                        t.name: await tenant_data.delete_all(conn, t, cid)
                        for t in reversed(TENANT_TABLES)
                        if not t.control_plane
                    }
                await _event(rt, mig, "cleanup", "succeeded", deleted=deleted)
        else:
            old = await store.get(rt.db, mig["deployment_id"]) if mig["deployment_id"] else None
            if old is not None and old["status"] == "active" and old["database_url"] is None:
                await deployments.destroy(rt, dict(old))
                await store.update(rt.db, old["id"], cid, status="decommissioned")
                await _event(rt, mig, "cleanup", "succeeded", decommissioned=str(old["id"]))
        await store.set_migration_status(rt.db, cid, mig["id"], status="cleaned")
    except Exception as exc:
        await _event(rt, mig, "cleanup", "failed", error=str(exc) or type(exc).__name__)
        raise


async def resume(rt) -> None:
    """On start: a migration the node died in never switched (the switch is one transaction), so
    the customer is still on its source: record the failure; schedule pending clean-ups."""
    for row in await store.migrations_in_status(rt.db, "running"):
        mig = dict(row)
        error = "interrupted: the node stopped during the migration"
        await store.set_migration_status(rt.db, mig["customer_id"], mig["id"], status="failed", error=error)
        await _event(rt, mig, "finish", "failed", error=error)
        if mig["deployment_id"] is not None:
            dep = await store.get(rt.db, mig["deployment_id"])
            if dep is not None and dep["status"] == "migrating":
                back = "active" if dep["database_url"] is not None else "failed"
                await store.update(
                    rt.db, dep["id"], mig["customer_id"], status=back, error=None if back == "active" else error
                )
    for row in await store.pending_cleanups(rt.db):
        rt.spawn(cleanup_when_due(rt, dict(row)), f"tenant_cleanup:{row['id']}")
