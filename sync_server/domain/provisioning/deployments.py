"""Deployments: create, provision in the background, decommission; and what a restart resumes.

Status: provisioning -> active -> migrating -> active | failed -> decommissioned. Every step and
every failure is an infrastructure_events row (with its data and error). A provisioning job that
dies with the node is resumed on the next start: the driver skips the steps its saved state says
are done; a job that fails rolls back what it made, so nothing is left half-provisioned.

A single-tenant deployment serves its customer only once a tenant migration has moved the data and
set `database_url` (the registry routes on it); until then `provisioned_url` holds the empty database.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog

from storage import deployments as store
from sync_server.domain.provisioning import drivers

log = structlog.get_logger("sync_server.domain.provisioning")

MODES = ("multi_tenant", "single_tenant")
INFRASTRUCTURES = ("local", "flyio", "hetzner")


class DeploymentError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}


def _events(rt, dep: dict):
    async def progress(step: str, status: str, error: str | None = None, **data) -> None:
        await store.record_event(
            rt.db,
            customer_id=dep["customer_id"],
            deployment_id=dep["id"],
            step=step,
            status=status,
            data=drivers.public_state(data),
            error=error,
        )
        log.info("deployment_step", deployment_id=str(dep["id"]), step=step, status=status, error=error)

    return progress


async def _insert(rt, *, customer_id, mode, infrastructure, region, config) -> dict:
    if mode == "single_tenant":
        try:
            drivers.driver_for(infrastructure, rt.settings).check_configured()
        except drivers.DriverNotConfigured as exc:
            raise DeploymentError(422, "driver_not_configured", str(exc), {"infrastructure": infrastructure}) from None
    try:
        dep = dict(
            await store.insert(
                rt.db,
                customer_id=customer_id,
                mode=mode,
                infrastructure=infrastructure,
                region=region,
                config=config or {},
            )
        )
    except asyncpg.UniqueViolationError:
        existing = await store.current(rt.db, customer_id)
        raise DeploymentError(
            409,
            "deployment_exists",
            "the customer already has a deployment that is provisioning, active or migrating",
            {"deployment_id": str(existing["id"]) if existing else None},
        ) from None
    await _events(rt, dep)("create", "succeeded", mode=mode, infrastructure=infrastructure, region=region)
    return dep


async def create_inline(
    rt, *, customer_id, infrastructure: str, region: str | None = None, config: dict | None = None
) -> dict:
    """A single-tenant deployment provisioned before returning (a tenant migration's first step)."""
    dep = await _insert(
        rt, customer_id=customer_id, mode="single_tenant", infrastructure=infrastructure, region=region, config=config
    )
    return await provision(rt, dep)


async def create(
    rt, *, customer_id, mode: str, infrastructure: str, region: str | None = None, config: dict | None = None
) -> dict:
    """Record the deployment and start provisioning it in the background."""
    if await store.customer_profile(rt.db, customer_id) is None:
        raise DeploymentError(404, "not_found", "customer not found")
    dep = await _insert(
        rt, customer_id=customer_id, mode=mode, infrastructure=infrastructure, region=region, config=config
    )
    rt.spawn(provision(rt, dep), f"provision:{dep['id']}")
    return dep


async def provision(rt, dep: dict) -> dict:
    """The background job (also what a restart re-runs for a deployment still `provisioning`)."""
    progress = _events(rt, dep)
    state = dict(dep.get("config") or {})

    async def save(new_state: dict) -> None:
        await store.update(rt.db, dep["id"], dep["customer_id"], config=new_state)

    if dep["mode"] == "multi_tenant":
        await progress("provision", "succeeded", database="shared")
        return dict(await store.update(rt.db, dep["id"], dep["customer_id"], status="active"))
    driver = drivers.driver_for(dep["infrastructure"], rt.settings)
    await progress("provision", "started", infrastructure=dep["infrastructure"])
    try:
        url = await driver.provision(dep, state, save, progress)
    except Exception as exc:  # every failure is recorded, then what was made is removed
        error = str(exc) or type(exc).__name__
        log.warning("provision_failed", deployment_id=str(dep["id"]), error=error)
        await progress("provision", "failed", error=error)
        try:
            await driver.destroy(dep, state, progress)
            await save(state)
        except Exception as rollback_exc:
            await progress("rollback", "failed", error=str(rollback_exc) or type(rollback_exc).__name__)
        return dict(
            await store.update(rt.db, dep["id"], dep["customer_id"], status="failed", error=error, config=state)
        )
    updated = await store.update(
        rt.db, dep["id"], dep["customer_id"], status="active", provisioned_url=url, config=state, error=None
    )
    await progress("provision", "succeeded", infrastructure=dep["infrastructure"])
    return dict(updated)


async def decommission(rt, deployment_id) -> dict:
    dep = await store.get(rt.db, deployment_id)
    if dep is None:
        raise DeploymentError(404, "not_found", "deployment not found")
    dep = dict(dep)
    if dep["status"] == "decommissioned":
        return dep
    if dep["status"] in ("provisioning", "migrating"):
        raise DeploymentError(409, "deployment_busy", f"deployment is {dep['status']}; wait for it to finish")
    if dep["database_url"] is not None:
        raise DeploymentError(
            409,
            "deployment_serving",
            "this deployment serves its customer; migrate the customer "
            "to multi_tenant first (POST /api/v1/customers/{id}/migrations)",
        )
    await destroy(rt, dep)
    return dict(await store.update(rt.db, dep["id"], dep["customer_id"], status="decommissioned"))


async def destroy(rt, dep: dict) -> None:
    progress = _events(rt, dep)
    state = dict(dep.get("config") or {})
    if dep["mode"] == "single_tenant":
        await progress("decommission", "started")
        try:
            await drivers.driver_for(dep["infrastructure"], rt.settings).destroy(dep, state, progress)
        except Exception as exc:
            await progress("decommission", "failed", error=str(exc) or type(exc).__name__)
            raise DeploymentError(502, "decommission_failed", str(exc)) from exc
        finally:
            await store.update(rt.db, dep["id"], dep["customer_id"], config=state)
    await progress("decommission", "succeeded")


async def resume(rt) -> None:
    """On start: re-run provisioning jobs a crash interrupted."""
    for row in await store.in_status(rt.db, "provisioning"):
        dep = dict(row)
        await _events(rt, dep)("resume", "started", reason="node restarted while provisioning")
        rt.spawn(provision(rt, dep), f"provision:{dep['id']}")


def public(dep: dict) -> dict:
    """A deployment as the API shows it: no passwords, in config or in URLs."""
    out: dict[str, Any] = {k: (str(v) if k in ("id", "customer_id") else v) for k, v in dep.items()}
    out["config"] = drivers.public_state(dep.get("config") or {})
    for key in ("database_url", "provisioned_url"):
        if out.get(key):
            out[key] = _mask(out[key])
    for key in ("created_at", "updated_at"):
        if out.get(key) is not None:
            out[key] = out[key].isoformat()
    return out


def _mask(url: str) -> str:
    from urllib.parse import urlparse, urlunparse

    p = urlparse(url)
    if p.password:
        netloc = p.netloc.replace(f":{p.password}@", ":***@")
        return urlunparse(p._replace(netloc=netloc))
    return url
