"""REST rate limit: REST_RATE_LIMIT_PER_MINUTE requests per credential in any 60 seconds (a sliding
window), shared by every node through Redis (sync_server.extensions.shared_limits.RateLimit).
Requests with a bearer credential count against it, and so do requests with the dispatcher app's
session cookie or the operator console's (by the cookie); unauthenticated requests only on the sign-in routes (password
guessing), by address. Past the limit: 429 `rate_limited` with Retry-After (seconds until the
oldest counted requests leave the window, so a request then is counted again); refused requests
are not counted."""

from __future__ import annotations

from api.current import runtime
from sync_server.domain.accounts import operators, user_sessions
from sync_server.extensions.shared_limits import credential_of

from .calls import Call
from .errors import ApiError

LOGIN = "/api/v1/auth/login"
APP_SIGN_IN = "/api/v1/app/session"  # api.app_sessions (POST signs in)
CONSOLE_SIGN_IN = "/api/v1/operator/session"  # api.operator_sessions (POST signs in)
SIGN_IN = frozenset((LOGIN, APP_SIGN_IN, CONSOLE_SIGN_IN))


async def check(call: Call) -> None:
    """Count the call against its credential's last minute; ApiError 429 past the limit."""
    limit = getattr(runtime(), "rate_limit", None)
    if limit is None or not call.path.startswith("/api/"):
        return
    authorization = call.headers.get("authorization")
    if not authorization:
        cookie = call.cookie(user_sessions.COOKIE) or call.cookie(operators.COOKIE)
        if cookie and call.path not in SIGN_IN:
            authorization = "Bearer " + cookie  # counted by the session, like a bearer credential
        elif call.path not in SIGN_IN:
            return
    retry_after = await limit.hit(credential_of(authorization, call.remote_addr))
    if retry_after is not None:
        raise ApiError(
            429,
            "rate_limited",
            f"more than {limit.per_minute} requests per minute",
            {"limit_per_minute": limit.per_minute, "retry_after_seconds": retry_after},
            {"Retry-After": str(retry_after)},
        )
