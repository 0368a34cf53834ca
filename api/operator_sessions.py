"""Sign-in of operators to the console (/admin/): an HttpOnly session cookie, not a token the
page's script could read or leak.

POST   /api/v1/operator/session   {email, password} -> the operator and the session's CSRF token;
                                  sets `whs_operator` (HttpOnly, SameSite=Strict, Secure over TLS)
GET    /api/v1/operator/session   who is signed in (401 when nobody), with the CSRF token
DELETE /api/v1/operator/session   sign out: the session ends at once (X-CSRF-Token required)

The cookie holds an ordinary operator session token (accounts.operators: the `tokens` table, the
same lifetime as POST /api/v1/auth/login), so every operator route accepts it
(api.auth.authenticate_operator) and the roles are the same: staff may not delete. CSRF is the
dispatcher app's keyed double submit (accounts.user_sessions.csrf_token over the cookie value).
A customer's API key or dispatcher-app cookie never opens these routes.
"""

from __future__ import annotations

import datetime as dt

from pydantic import Field
from quart import Blueprint, Response

from api.current import runtime
from sync_server.domain.accounts import operators, user_sessions

from . import calls
from .accounts import LoginRequest, Operator
from .auth import OperatorPrincipal, authenticate_operator, browser_sign_in_guard
from .errors import ApiError
from .openapi import operation
from .schemas import ResponseModel

blueprint = Blueprint("operator_sessions", __name__)
TAGS = ["operator auth"]
PATH = "/api/v1/operator/session"


class ConsoleSession(ResponseModel):
    operator: Operator
    csrf_token: str = Field(description="send as X-CSRF-Token on every state-changing request")
    can_delete: bool = Field(description="admin operators only: deletes, revocations, migrations")
    expires_at: dt.datetime | None = None


def _json(value: dict) -> Response:
    response = Response(ConsoleSession.model_validate(value).model_dump_json(), mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _out(user_id, email: str, role: str, cookie: str, expires_at=None) -> dict:
    return {
        "operator": {"id": user_id, "email": email, "role": role},
        "csrf_token": user_sessions.csrf_token(runtime().secret_key, cookie),
        "can_delete": role == "admin",
        "expires_at": expires_at,
    }


@blueprint.post(PATH)
@operation(
    "Sign in to the operator console: email and password (sets the HttpOnly session cookie)",
    tags=TAGS,
    body=LoginRequest,
    response=ConsoleSession,
    errors=(401, 403, 415),
    security=(),
)
async def sign_in(body: LoginRequest):
    browser_sign_in_guard()
    rt = runtime()
    ttl = rt.settings.operator_session_ttl
    try:
        session = await operators.sign_in(rt.db, body.email, body.password, ttl)
    except operators.SignInRejected:
        raise ApiError(401, "invalid_credentials", "email or password is wrong") from None
    user = session.user
    response = _json(_out(user["id"], user["email"], user["role"], session.raw, session.expires_at))
    response.set_cookie(
        operators.COOKIE,
        session.raw,
        max_age=ttl,
        expires=session.expires_at,
        path="/",
        secure=calls.current().over_tls,
        httponly=True,
        samesite="Strict",
    )
    return response


async def _current() -> tuple[OperatorPrincipal, str]:
    cookie = calls.current().cookie(operators.COOKIE)
    if not cookie or "authorization" in calls.current().headers:  # the console's cookie, nothing else
        raise ApiError(401, "unauthorized", "not signed in to the operator console")
    return await authenticate_operator(), cookie  # CSRF is checked there (DELETE changes state)


@blueprint.get(PATH)
@operation(
    "The operator signed in to the console (its session cookie)",
    tags=TAGS,
    response=ConsoleSession,
    errors=(401,),
    security=("operator_session",),
)
async def current_session():
    principal, cookie = await _current()
    return _json(_out(principal.user_id, principal.email, principal.role, cookie))


@blueprint.delete(PATH)
@operation(
    "Sign out of the operator console: the session ends at once",
    tags=TAGS,
    errors=(401, 403),
    security=("operator_session",),
)
async def sign_out():
    principal, _ = await _current()
    await operators.sign_out(runtime().db, principal.token_id)
    response = Response(b"", status=204)
    response.delete_cookie(
        operators.COOKIE, path="/", secure=calls.current().over_tls, httponly=True, samesite="Strict"
    )
    response.headers["Cache-Control"] = "no-store"
    return response
