"""Liveness and readiness (outside /api/v1, served and documented like every other route)."""

from __future__ import annotations

from typing import Any, Literal

from quart import Blueprint

from api.current import runtime

from .openapi import operation
from .schemas import ResponseModel

blueprint = Blueprint("health", __name__)
TAGS = ["health"]


class Liveness(ResponseModel):
    status: Literal["ok"]


class Readiness(ResponseModel):
    status: Literal["ok", "degraded", "unavailable"]
    checks: dict[str, dict[str, Any]]


@blueprint.get("/healthz")
@operation("Liveness: the process answers", tags=TAGS, response=Liveness)
async def healthz():
    return {"status": "ok"}


@blueprint.get("/readyz")
@operation(
    "Readiness: every required dependency answers (503 when one does not)",
    tags=TAGS,
    response=Readiness,
    also={503: Readiness},
)
async def readyz():
    checks = await runtime().readiness()
    ready = all(c["ok"] for c in checks.values() if c.get("required", True))
    degraded = not all(c["ok"] for c in checks.values())
    status = "ok" if not degraded else ("degraded" if ready else "unavailable")
    body = {"status": status, "checks": checks}
    return body if ready else (body, 503)
