"""REST rate limit: REST_RATE_LIMIT_PER_MINUTE requests per credential per minute, shared by every
node through Redis (sync_server.shared_limits.RateLimit). Requests with a bearer credential count
against it; unauthenticated requests only on the login route (password guessing), by address.
Past the limit: 429 `rate_limited` with Retry-After (seconds until the window turns)."""
from __future__ import annotations

from quart import Quart, jsonify, request

from sync_server.runtime import runtime
from sync_server.shared_limits import credential_of

from .errors import error_body

LOGIN = "/api/v1/auth/login"


def install(app: Quart) -> None:
    @app.before_request
    async def _rate_limit():
        limit = getattr(runtime(), "rate_limit", None)
        if limit is None or not request.path.startswith("/api/"):
            return None
        authorization = request.headers.get("Authorization")
        if not authorization and request.path != LOGIN:
            return None
        retry_after = await limit.hit(credential_of(authorization, request.remote_addr))
        if retry_after is None:
            return None
        body = error_body("rate_limited", f"more than {limit.per_minute} requests per minute",
                          {"limit_per_minute": limit.per_minute, "retry_after_seconds": retry_after})
        return jsonify(body), 429, {"Retry-After": str(retry_after)}
