"""`GET /metrics`: this node's Prometheus metrics (sync_server/extensions/metrics.py), on the main
port. With METRICS_TOKEN set a scrape needs `Authorization: Bearer <METRICS_TOKEN>` (401
otherwise); unset, only loopback clients are answered (403 otherwise), so a node reachable from
the internet never shows its numbers to anyone by default."""

from __future__ import annotations

import hmac
import ipaddress

from quart import Blueprint, Response

from api.current import runtime
from sync_server.extensions.metrics import CONTENT_TYPE

from . import calls
from .errors import ApiError
from .openapi import operation

blueprint = Blueprint("metrics", __name__)


def _loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a unix socket or an unparseable peer: not known to be local


def _allowed(token: str | None) -> None:
    call = calls.current()
    if token:
        scheme, _, given = (call.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "a scrape needs Authorization: Bearer <METRICS_TOKEN>",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    elif not _loopback(call.remote_addr):
        raise ApiError(403, "forbidden", "metrics are served to loopback clients only unless METRICS_TOKEN is set")


@blueprint.get("/metrics")
@operation(
    "Prometheus metrics of this node (text exposition format)",
    tags=["health"],
    content={CONTENT_TYPE: {"type": "string"}},
    errors=(401, 403),
    description="METRICS_TOKEN set: needs `Authorization: Bearer <METRICS_TOKEN>`; unset: loopback clients only.",
)
async def metrics():
    rt = runtime()
    _allowed(rt.settings.metrics_token)
    return Response(rt.metrics.render(), content_type=CONTENT_TYPE)
