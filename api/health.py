"""Liveness and readiness."""
from __future__ import annotations

from quart import Blueprint, jsonify

from sync_server.node.runtime import runtime

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
async def healthz():
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
async def readyz():
    checks = await runtime().readiness()
    ready = all(c["ok"] for c in checks.values() if c.get("required", True))
    degraded = not all(c["ok"] for c in checks.values())
    status = "ok" if not degraded else ("degraded" if ready else "unavailable")
    return jsonify({"status": status, "checks": checks}), 200 if ready else 503
