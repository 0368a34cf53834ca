"""Who is calling: a customer's API key or an operator's session token (both `Authorization: Bearer`),
or, only when no Authorization header is sent, a cookie: an operator signed in to the console
(`whs_operator`, operator routes only) or a customer user signed in to the dispatcher app
(`whs_session`, customer routes only); with a cookie, state-changing methods need X-CSRF-Token.

Decorators put the principal on the current call (`api.calls.principal()`) and bind the tenant id
into every log line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import wraps

import asyncpg

from api.current import runtime
from storage import Database
from sync_server import logs
from sync_server.domain.accounts import api_keys, operators, user_sessions

from . import calls
from .errors import ApiError


@dataclass(frozen=True)
class OperatorPrincipal:
    user_id: str
    email: str
    role: str
    token_id: str


def bearer() -> str:
    header = calls.current().headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer ...)")
    return value.strip()


API_KEY_PREFIX = "whk_"
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


async def authenticate_customer() -> api_keys.ApiKeyPrincipal | user_sessions.SessionPrincipal:
    call = calls.current()
    if "authorization" not in call.headers:
        cookie = call.cookie(user_sessions.COOKIE)
        if cookie:
            return await authenticate_session(cookie)
    raw = bearer()
    try:
        rt = runtime()
        principal = await api_keys.authenticate(rt.registry, raw, cache=rt.api_keys)
    except api_keys.KeyRejected as exc:
        message = exc.message
        if exc.code == "invalid_api_key" and not raw.startswith(API_KEY_PREFIX):
            # most often an operator's session token sent to a customer route
            message = "this route needs a customer API key (whk_live_... or whk_test_...), not an operator token"
        raise ApiError(401 if exc.code != "customer_suspended" else 403, exc.code, message) from None
    logs.bind(customer_id=principal.customer_id)
    return principal


async def authenticate_session(cookie: str) -> user_sessions.SessionPrincipal:
    """The signed-in user of the app's session cookie; a state-changing request must also present
    the session's CSRF token (403 csrf_failed otherwise)."""
    rt = runtime()
    try:
        principal = await user_sessions.authenticate(rt.registry, rt.secret_key, cookie)
    except user_sessions.SessionRejected as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    call = calls.current()
    if call.method not in SAFE_METHODS and not user_sessions.csrf_ok(
        rt.secret_key, cookie, call.headers.get(user_sessions.CSRF_HEADER)
    ):
        raise ApiError(403, "csrf_failed", "missing or wrong X-CSRF-Token header for this session")
    logs.bind(customer_id=principal.customer_id)
    return principal


def operator_cookie() -> str | None:
    """The operator console's session cookie, when the call has no Authorization header."""
    call = calls.current()
    return None if "authorization" in call.headers else call.cookie(operators.COOKIE)


async def authenticate_operator() -> OperatorPrincipal:
    """An operator session: `Authorization: Bearer wop_...` or the console's HttpOnly cookie (then a
    state-changing request must also carry the session's X-CSRF-Token, 403 csrf_failed otherwise).
    A customer's API key or dispatcher-app cookie is never an operator (401)."""
    cookie = operator_cookie()
    raw = cookie or bearer()
    if raw.startswith(API_KEY_PREFIX):
        raise ApiError(
            401, "unauthorized", "this route needs an operator token (POST /api/v1/auth/login), not a customer API key"
        )
    rt = runtime()
    row = await operators.find(rt.db, raw)
    if row is None:
        raise ApiError(401, "unauthorized", "operator token is invalid or expired")
    call = calls.current()
    if (
        cookie is not None
        and call.method not in SAFE_METHODS
        and not user_sessions.csrf_ok(rt.secret_key, cookie, call.headers.get(user_sessions.CSRF_HEADER))
    ):
        raise ApiError(403, "csrf_failed", "missing or wrong X-CSRF-Token header for this session")
    return OperatorPrincipal(str(row["user_id"]), row["email"], row["role"], str(row["token_id"]))


def customer_required(*permissions: str):
    """The route needs an API key holding every permission named (`admin` holds them all)."""

    def decorate(handler):
        @wraps(handler)
        async def wrapper(*args, **kwargs):
            principal = await authenticate_customer()
            missing = [p for p in permissions if not principal.has(p)]
            if missing:
                raise ApiError(403, "forbidden", "credential lacks a required permission", {"missing": missing})
            calls.current().principal = principal
            return await handler(*args, **kwargs)

        wrapper.__auth__ = ("customer", tuple(permissions))  # read by api/openapi.py
        return wrapper

    return decorate


def operator_required(role: str | None = None):
    """The route needs an operator session; `role="admin"` for destructive operations."""

    def decorate(handler):
        @wraps(handler)
        async def wrapper(*args, **kwargs):
            principal = await authenticate_operator()
            if role is not None and principal.role != role:
                raise ApiError(403, "forbidden", f"requires operator role {role!r}")
            calls.current().principal = principal
            return await handler(*args, **kwargs)

        wrapper.__auth__ = ("operator", (f"operator role {role}",) if role else ())  # read by api/openapi.py
        return wrapper

    return decorate


async def customer_database() -> tuple[Database, str]:
    """The database holding the calling customer's data, and the customer's id (for the one-round-
    trip reads that scope themselves: Database.tenant_read)."""
    customer_id = calls.principal().customer_id
    return await runtime().registry.for_customer(customer_id), customer_id


@asynccontextmanager
async def customer_transaction() -> AsyncIterator[asyncpg.Connection]:
    """A tenant transaction for the calling customer, on whichever database holds its data."""
    customer_id = calls.principal().customer_id
    db = await runtime().registry.for_customer(customer_id)
    async with db.tenant(customer_id) as conn:
        yield conn


def browser_sign_in_guard() -> None:
    """A sign-in that sets a session cookie must come from this site's own page, not a form or
    script of another site signing the browser in to the attacker's account (login CSRF): the body
    must be declared `application/json` (another site's form can send JSON-looking text only as
    text/plain, and a cross-site fetch with this type needs a CORS preflight, which is never
    granted), and a browser's `Sec-Fetch-Site`, when sent, must say same-origin (or none: typed or
    bookmarked). Clients outside browsers (curl, scripts) send neither header and only need the type."""
    headers = calls.current().headers
    site = headers.get("sec-fetch-site", "").lower()
    if site and site not in ("same-origin", "none"):
        raise ApiError(403, "cross_site_sign_in", "sign in from this site's own page")
    media = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", "sign-in takes Content-Type: application/json")
