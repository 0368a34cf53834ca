"""Provisioning REST: recommendation, deployments (operator), tenant migrations (operator)."""
from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Blueprint, jsonify, request

from storage import deployments as store
from sync_server.domain.provisioning import (
    deployments,
    recommendations,
    tenant_migration,
)
from sync_server.domain.provisioning.decision import Profile, recommend
from sync_server.node.runtime import runtime

from .auth import (
    authenticate_customer,
    authenticate_operator,
    bearer,
    operator_required,
)
from .errors import ApiError, not_found

blueprint = Blueprint("provisioning", __name__, url_prefix="/api/v1")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendationIn(_Strict):
    customer_id: uuid.UUID | None = None
    vehicles: int | None = Field(default=None, ge=0, le=1_000_000)
    regions: list[str] | None = Field(default=None, max_length=50)
    compliance: list[str] | None = Field(default=None, max_length=20)
    latency_ms: int | None = Field(default=None, ge=1, le=60_000)
    monthly_budget_usd: float | None = Field(default=None, ge=0)
    plan: str | None = None


class DeploymentIn(_Strict):
    customer_id: uuid.UUID
    mode: Literal["multi_tenant", "single_tenant"]
    infrastructure: Literal["local", "flyio", "hetzner"]
    region: str | None = Field(default=None, max_length=40)
    config: dict = Field(default_factory=dict)


class MigrationIn(_Strict):
    to: Literal["single_tenant", "multi_tenant"]
    infrastructure: Literal["local", "flyio", "hetzner"] = "local"
    region: str | None = Field(default=None, max_length=40)
    plan: str | None = None
    dry_run: bool = False


async def _body(model: type[_Strict]) -> _Strict:
    data = await request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(422, "validation_error", "body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = {".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in exc.errors()}
        raise ApiError(422, "validation_error", "invalid request body", {"fields": fields}) from None


def _wrap(exc: deployments.DeploymentError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, exc.details)


def _uuid(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found(what) from None


@blueprint.post("/provisioning/recommendation")
async def recommendation():
    """Operators and customers (any valid API key). Fields left out are read from the stored
    customer (the key's customer, or `customer_id` for operators); the result is recorded when a
    customer is known."""
    token = bearer()
    body = await _body(RecommendationIn)
    if token.startswith("whk_"):
        principal = await authenticate_customer()
        if body.customer_id is not None and str(body.customer_id) != principal.customer_id:
            raise ApiError(403, "forbidden", "an API key can only ask for its own customer")
        customer_id = principal.customer_id
    else:
        await authenticate_operator()
        customer_id = str(body.customer_id) if body.customer_id else None
    rt = runtime()
    given = body.model_dump(exclude={"customer_id"}, exclude_none=True)
    if customer_id is None:
        profile = Profile(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
        return jsonify({**recommend(profile).as_dict(), "recorded": False})
    stored = await recommendations.stored_profile(rt, customer_id)
    if stored is None:
        raise not_found("customer")
    import dataclasses

    profile = dataclasses.replace(stored, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
    return jsonify({**await recommendations.record(rt, customer_id, profile, "request"), "recorded": True})


@blueprint.get("/customers/<customer_id>/recommendations")
@operator_required()
async def list_recommendations(customer_id: str):
    rows = await store.recommendations(runtime().db, _uuid(customer_id, "customer"))
    return jsonify({"data": [{**dict(r), "created_at": r["created_at"].isoformat()} for r in rows]})


@blueprint.post("/deployments")
@operator_required()
async def create_deployment():
    body = await _body(DeploymentIn)
    try:
        dep = await deployments.create(runtime(), customer_id=body.customer_id, mode=body.mode,
                                       infrastructure=body.infrastructure, region=body.region, config=body.config)
    except deployments.DeploymentError as exc:
        raise _wrap(exc) from None
    return jsonify(deployments.public(dep)), 202


@blueprint.get("/deployments")
@operator_required()
async def list_deployments():
    customer = request.args.get("customer_id")
    status = request.args.get("status")
    rows = await store.list_all(runtime().db, customer_id=_uuid(customer, "customer") if customer else None,
                                status=status)
    return jsonify({"data": [deployments.public(dict(r)) for r in rows]})


@blueprint.get("/deployments/<deployment_id>")
@operator_required()
async def show_deployment(deployment_id: str):
    rt = runtime()
    dep = await store.get(rt.db, _uuid(deployment_id, "deployment"))
    if dep is None:
        raise not_found("deployment")
    events = await store.events(rt.db, dep["customer_id"], dep["id"])
    return jsonify({**deployments.public(dict(dep)), "events": [_event(e) for e in events]})


@blueprint.post("/deployments/<deployment_id>/decommission")
@operator_required("admin")
async def decommission_deployment(deployment_id: str):
    try:
        dep = await deployments.decommission(runtime(), _uuid(deployment_id, "deployment"))
    except deployments.DeploymentError as exc:
        raise _wrap(exc) from None
    return jsonify(deployments.public(dep))


@blueprint.post("/customers/<customer_id>/migrations")
@operator_required("admin")
async def start_migration(customer_id: str):
    body = await _body(MigrationIn)
    rt = runtime()
    cid = _uuid(customer_id, "customer")
    try:
        if body.dry_run:
            return jsonify(await tenant_migration.plan_move(rt, cid, body.to, plan=body.plan))
        mig = await tenant_migration.start(rt, cid, body.to, infrastructure=body.infrastructure, plan=body.plan,
                                           region=body.region)
    except deployments.DeploymentError as exc:
        raise _wrap(exc) from None
    return jsonify(_migration(mig, [])), 202


@blueprint.get("/customers/<customer_id>/migrations/<migration_id>")
@operator_required()
async def show_migration(customer_id: str, migration_id: str):
    rt = runtime()
    cid = _uuid(customer_id, "customer")
    mig = await store.get_migration(rt.db, cid, _uuid(migration_id, "migration"))
    if mig is None:
        raise not_found("migration")
    events = [e for e in await store.events(rt.db, cid) if (e["data"] or {}).get("migration_id") == str(mig["id"])]
    return jsonify(_migration(dict(mig), events))


def _event(e) -> dict:
    return {"id": e["id"], "step": e["step"], "status": e["status"], "data": e["data"], "error": e["error"],
            "created_at": e["created_at"].isoformat()}


def _progress(events) -> dict:
    """Rows copied so far, in all and per table in copy order (from the migration's copy events)."""
    copy = [e for e in events if e["step"] == "migration_copy"]
    totals: dict[str, int] = {}
    tables: dict[str, dict] = {}
    for e in copy:
        data = e["data"] or {}
        if e["status"] == "started":
            totals, tables = dict(data.get("tables") or {}), {}
        elif e["status"] == "progress" and data.get("table"):
            tables[data["table"]] = {"table": data["table"], "done": data.get("rows", 0),
                                     "total": data.get("table_total")}
    for name, n in totals.items():  # not reached yet (or empty)
        tables.setdefault(name, {"table": name, "done": 0, "total": n})
    last = next((e["data"] or {} for e in reversed(copy) if e["status"] in ("progress", "succeeded")), {})
    return {"done": last.get("done", 0), "total": last.get("total"), "table": last.get("table"),
            "copied": any(e["status"] == "succeeded" for e in copy), "tables": list(tables.values())}


def _migration(mig: dict, events) -> dict:
    out = {k: (v.isoformat() if hasattr(v, "isoformat") else str(v) if isinstance(v, uuid.UUID) else v)
           for k, v in mig.items() if k != "source_url"}
    out["progress"] = _progress(events)
    out["events"] = [_event(e) for e in events]
    return out
