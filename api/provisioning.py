"""Provisioning REST: recommendation, deployments (operator), tenant migrations (operator), and the
operator console's views of the infrastructure: events of every customer, the live nodes.

Declared with `@operation` like every /api/v1 route: bodies are validated by the models below
(unknown fields are a 422 with field paths), answers are shaped by the response models, which
declare the fields clients rely on and pass on the rest of the stored row (`extra="allow"`)."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Literal

from pydantic import ConfigDict, Field
from quart import Blueprint

from api.current import runtime
from storage import deployments as store
from sync_server.domain.provisioning import (
    deployments,
    nodes,
    recommendations,
    tenant_migration,
)
from sync_server.domain.provisioning.decision import Profile, recommend

from .auth import (
    authenticate_customer,
    authenticate_operator,
    bearer,
    operator_cookie,
    operator_required,
)
from .errors import ApiError, not_found
from .openapi import operation
from .schemas import RequestModel, ResponseModel

blueprint = Blueprint("provisioning", __name__, url_prefix="/api/v1")

TAGS = ["provisioning"]
DEPLOYMENT_TAGS = ["deployments (operator)"]
MIGRATION_TAGS = ["tenant migrations (operator)"]


class RecommendationIn(RequestModel):
    customer_id: uuid.UUID | None = None
    vehicles: int | None = Field(default=None, ge=0, le=1_000_000)
    regions: list[str] | None = Field(default=None, max_length=50)
    compliance: list[str] | None = Field(default=None, max_length=20)
    latency_ms: int | None = Field(default=None, ge=1, le=60_000)
    monthly_budget_usd: float | None = Field(default=None, ge=0)
    plan: str | None = None


class DeploymentIn(RequestModel):
    customer_id: uuid.UUID
    mode: Literal["multi_tenant", "single_tenant"]
    infrastructure: Literal["local", "flyio", "hetzner"]
    region: str | None = Field(default=None, max_length=40)
    config: dict = Field(default_factory=dict)


class MigrationIn(RequestModel):
    to: Literal["single_tenant", "multi_tenant"]
    infrastructure: Literal["local", "flyio", "hetzner"] = "local"
    region: str | None = Field(default=None, max_length=40)
    plan: str | None = None
    dry_run: bool = False


class DeploymentsQuery(RequestModel):
    customer_id: uuid.UUID | None = None
    status: str | None = Field(None, max_length=40)


class _Open(ResponseModel):
    """The declared fields, and the rest of the row as stored (new columns reach clients unchanged)."""

    model_config = ConfigDict(extra="allow")


class Recommendation(_Open):
    mode: str
    plan: str
    recorded: bool


class StoredRecommendation(_Open):
    created_at: str


class Recommendations(ResponseModel):
    data: list[StoredRecommendation]


class Event(_Open):
    id: Any
    step: str
    status: str
    data: Any = None
    error: str | None = None
    created_at: str


class Deployment(_Open):
    id: str
    customer_id: str
    mode: str
    infrastructure: str
    status: str
    config: dict[str, Any]


class DeploymentShown(Deployment):
    events: list[Event]


class Deployments(ResponseModel):
    data: list[Deployment]


class Migration(_Open):
    id: str
    status: str
    progress: dict[str, Any]
    events: list[Event]


class MovePlan(_Open):
    """What the move would do (dry run): nothing is changed."""


def _wrap(exc: deployments.DeploymentError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, exc.details)


def _uuid(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found(what) from None


@blueprint.post("/provisioning/recommendation")
@operation(
    "Recommend a deployment mode and plan (recorded when a customer is known)",
    tags=TAGS,
    body=RecommendationIn,
    response=Recommendation,
    errors=(404,),
    security=("customer", "operator"),
)
async def recommendation(body: RecommendationIn):
    """Operators and customers (any valid API key). Fields left out are read from the stored
    customer (the key's customer, or `customer_id` for operators); the result is recorded when a
    customer is known."""
    if operator_cookie() is None and bearer().startswith("whk_"):
        principal = await authenticate_customer()
        if body.customer_id is not None and str(body.customer_id) != principal.customer_id:
            raise ApiError(403, "forbidden", "an API key can only ask for its own customer")
        customer_id: str | None = principal.customer_id
    else:
        await authenticate_operator()
        customer_id = str(body.customer_id) if body.customer_id else None
    rt = runtime()
    given: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in body.model_dump(exclude={"customer_id"}, exclude_none=True).items()
    }
    if customer_id is None:
        profile = Profile(**given)
        return {**recommend(profile).as_dict(), "recorded": False}
    stored = await recommendations.stored_profile(rt, customer_id)
    if stored is None:
        raise not_found("customer")
    profile = dataclasses.replace(stored, **given)
    return {**await recommendations.record(rt, customer_id, profile, "request"), "recorded": True}


@blueprint.get("/customers/<customer_id>/recommendations")
@operator_required()
@operation("A customer's recorded recommendations", tags=TAGS, response=Recommendations)
async def list_recommendations(customer_id: str):
    rows = await store.recommendations(runtime().db, _uuid(customer_id, "customer"))
    return {"data": [{**dict(r), "created_at": r["created_at"].isoformat()} for r in rows]}


@blueprint.post("/deployments")
@operator_required()
@operation(
    "Create a deployment (provisioned in the background)",
    tags=DEPLOYMENT_TAGS,
    body=DeploymentIn,
    response=Deployment,
    status=202,
    errors=(404, 409),
)
async def create_deployment(body: DeploymentIn):
    try:
        dep = await deployments.create(
            runtime(),
            customer_id=body.customer_id,
            mode=body.mode,
            infrastructure=body.infrastructure,
            region=body.region,
            config=body.config,
        )
    except deployments.DeploymentError as exc:
        raise _wrap(exc) from None
    return deployments.public(dep)


@blueprint.get("/deployments")
@operator_required()
@operation("List deployments", tags=DEPLOYMENT_TAGS, query=DeploymentsQuery, response=Deployments)
async def list_deployments(query: DeploymentsQuery):
    rows = await store.list_all(runtime().db, customer_id=query.customer_id, status=query.status)
    return {"data": [deployments.public(dict(r)) for r in rows]}


@blueprint.get("/deployments/<deployment_id>")
@operator_required()
@operation("A deployment and its events", tags=DEPLOYMENT_TAGS, response=DeploymentShown)
async def show_deployment(deployment_id: str):
    rt = runtime()
    dep = await store.get(rt.db, _uuid(deployment_id, "deployment"))
    if dep is None:
        raise not_found("deployment")
    events = await store.events(rt.db, dep["customer_id"], dep["id"])
    return {**deployments.public(dict(dep)), "events": [_event(e) for e in events]}


@blueprint.post("/deployments/<deployment_id>/decommission")
@operator_required("admin")
@operation("Decommission a deployment", tags=DEPLOYMENT_TAGS, response=Deployment, errors=(409,))
async def decommission_deployment(deployment_id: str):
    try:
        dep = await deployments.decommission(runtime(), _uuid(deployment_id, "deployment"))
    except deployments.DeploymentError as exc:
        raise _wrap(exc) from None
    return deployments.public(dep)


@blueprint.post("/customers/<customer_id>/migrations")
@operator_required("admin")
@operation(
    "Move a customer between shared and dedicated databases (dry_run: the plan, 200)",
    tags=MIGRATION_TAGS,
    body=MigrationIn,
    response=Migration,
    status=202,
    also={200: MovePlan},
    errors=(409,),
)
async def start_migration(customer_id: str, body: MigrationIn):
    rt = runtime()
    cid = _uuid(customer_id, "customer")
    try:
        if body.dry_run:
            return await tenant_migration.plan_move(rt, cid, body.to, plan=body.plan), 200
        mig = await tenant_migration.start(
            rt, cid, body.to, infrastructure=body.infrastructure, plan=body.plan, region=body.region
        )
    except deployments.DeploymentError as exc:
        raise _wrap(exc) from None
    return _migration(mig, [])


@blueprint.get("/customers/<customer_id>/migrations/<migration_id>")
@operator_required()
@operation("A tenant migration: status, progress, events", tags=MIGRATION_TAGS, response=Migration)
async def show_migration(customer_id: str, migration_id: str):
    rt = runtime()
    cid = _uuid(customer_id, "customer")
    mig = await store.get_migration(rt.db, cid, _uuid(migration_id, "migration"))
    if mig is None:
        raise not_found("migration")
    events = [e for e in await store.events(rt.db, cid) if (e["data"] or {}).get("migration_id") == str(mig["id"])]
    return _migration(dict(mig), events)


class MigrationSummary(_Open):
    id: str
    status: str
    from_mode: str
    to_mode: str


class Migrations(ResponseModel):
    data: list[MigrationSummary]


@blueprint.get("/customers/<customer_id>/migrations")
@operator_required()
@operation(
    "A customer's tenant migrations, oldest first (no progress: see one migration)",
    tags=MIGRATION_TAGS,
    response=Migrations,
)
async def list_migrations(customer_id: str):
    rows = await store.list_migrations(runtime().db, _uuid(customer_id, "customer"))
    return {"data": [_migration(m, [], progress=False) for m in rows]}


class EventsQuery(RequestModel):
    customer_id: uuid.UUID | None = None
    before: int | None = Field(None, ge=1, le=2**63 - 1, description="ids below this (the previous page's last id)")
    limit: int = Field(50, ge=1, le=200)


class InfrastructureEvent(Event):
    customer_id: str
    customer_slug: str | None
    deployment_id: str | None


class InfrastructureEvents(ResponseModel):
    data: list[InfrastructureEvent]


@blueprint.get("/infrastructure-events")
@operator_required()
@operation(
    "Infrastructure events of every customer (or one), newest first: provisioning and migration steps",
    tags=DEPLOYMENT_TAGS,
    query=EventsQuery,
    response=InfrastructureEvents,
)
async def list_infrastructure_events(query: EventsQuery):
    rows = await store.recent_events(
        runtime().db, customer_id=query.customer_id, before_id=query.before, limit=query.limit
    )
    return {
        "data": [
            {
                **_event(r),
                "customer_id": str(r["customer_id"]),
                "customer_slug": r["customer_slug"],
                "deployment_id": str(r["deployment_id"]) if r["deployment_id"] else None,
            }
            for r in rows
        ]
    }


class Node(ResponseModel):
    id: str
    this_node: bool = Field(description="the node that answered")
    connections: int | None = Field(description="open sync connections (its last heartbeat)")
    rooms: int | None = Field(description="loaded documents (its last heartbeat)")
    started_at: float | None = Field(description="seconds since the epoch")
    beat_at: float | None = Field(description="its last heartbeat, seconds since the epoch")


class Nodes(ResponseModel):
    nodes: list[Node]
    source: Literal["redis", "local", "redis_unreachable"] = Field(
        description="redis: every node's heartbeat; local: a single node without Redis; "
        "redis_unreachable: only the answering node is known"
    )


@blueprint.get("/nodes")
@operator_required()
@operation(
    "The nodes serving the cluster (live Redis heartbeats) with connections and rooms", tags=TAGS, response=Nodes
)
async def list_nodes():
    return await nodes.list_nodes(runtime())


def _event(e) -> dict:
    return {
        "id": e["id"],
        "step": e["step"],
        "status": e["status"],
        "data": e["data"],
        "error": e["error"],
        "created_at": e["created_at"].isoformat(),
    }


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
            tables[data["table"]] = {
                "table": data["table"],
                "done": data.get("rows", 0),
                "total": data.get("table_total"),
            }
    for name, n in totals.items():  # not reached yet (or empty)
        tables.setdefault(name, {"table": name, "done": 0, "total": n})
    last = next((e["data"] or {} for e in reversed(copy) if e["status"] in ("progress", "succeeded")), {})
    return {
        "done": last.get("done", 0),
        "total": last.get("total"),
        "table": last.get("table"),
        "copied": any(e["status"] == "succeeded" for e in copy),
        "tables": list(tables.values()),
    }


def _migration(mig: dict, events, *, progress: bool = True) -> dict:
    out = {
        k: (v.isoformat() if hasattr(v, "isoformat") else str(v) if isinstance(v, uuid.UUID) else v)
        for k, v in mig.items()
        if k != "source_url"
    }
    if progress:
        out["progress"] = _progress(events)
        out["events"] = [_event(e) for e in events]
    return out
