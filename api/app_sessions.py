"""Sign-in of customer users to the dispatcher web app (/app/): a session cookie, not a bearer token.

POST   /api/v1/app/session   {customer (slug), email, password} -> the user; sets `whs_session`
                             (HttpOnly, SameSite=Lax, Secure over TLS) and `whs_csrf` (readable)
GET    /api/v1/app/session   who is signed in (401 when nobody), with the session's CSRF token
DELETE /api/v1/app/session   sign out: the session ends at once (X-CSRF-Token required)

With the cookie, every customer route (api.auth.customer_required) answers as for an API key with
the role's permissions (accounts.user_sessions.ROLE_PERMISSIONS): the app lists geofences, reads
positions and gets its own sync tokens (POST /api/v1/sync-tokens, docs `fleet` and `dispatch`); a
customer admin creates users and sets passwords through /api/v1/users.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import Field
from quart import Blueprint, Response

from api.current import runtime
from sync_server.domain.accounts import user_sessions

from . import calls
from .auth import authenticate_session, browser_sign_in_guard
from .errors import ApiError
from .openapi import operation
from .schemas import RequestModel, ResponseModel

blueprint = Blueprint("app_sessions", __name__)
TAGS = ["app session"]
PATH = "/api/v1/app/session"


class SignIn(RequestModel):
    customer: str = Field(min_length=1, max_length=100, description="the customer's slug")
    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=1, max_length=1024)


class SessionUser(ResponseModel):
    id: uuid.UUID
    email: str
    name: str
    role: Literal["admin", "member", "viewer"]


class SessionCustomer(ResponseModel):
    id: uuid.UUID
    slug: str
    name: str


class AppSession(ResponseModel):
    user: SessionUser
    customer: SessionCustomer
    permissions: list[str] = Field(description="what the role may do (the API-key permission names)")
    csrf_token: str = Field(description="send as X-CSRF-Token on every state-changing request")
    can_write: bool = Field(description="false for viewers: read-only sync tokens, no edits")


def _out(p: user_sessions.SessionPrincipal) -> dict:
    return {
        "user": {"id": p.user_id, "email": p.email, "name": p.name, "role": p.role},
        "customer": {"id": p.customer_id, "slug": p.customer_slug, "name": p.customer_name},
        "permissions": sorted(p.permissions),
        "csrf_token": p.csrf_token,
        "can_write": p.has("sync:write"),
    }


def _json(value: dict, status: int = 200) -> Response:
    return Response(AppSession.model_validate(value).model_dump_json(), status=status, mimetype="application/json")


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.post(PATH)
@operation(
    "Sign in to the dispatcher app: customer slug, email, password (sets the session cookie)",
    tags=TAGS,
    body=SignIn,
    response=AppSession,
    errors=(401, 403, 415),
    security=(),
)
async def sign_in(body: SignIn):
    browser_sign_in_guard()
    rt = runtime()
    call = calls.current()
    try:
        raw, principal = await user_sessions.sign_in(
            rt.registry,
            rt.secret_key,
            customer_slug=body.customer,
            email=body.email,
            password=body.password,
            ttl_seconds=rt.settings.app_session_ttl,
            user_agent=call.headers.get("user-agent", ""),
        )
    except user_sessions.SessionRejected as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    response = _json(_out(principal))
    secure = call.over_tls
    ttl = rt.settings.app_session_ttl
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)
    response.set_cookie(
        user_sessions.COOKIE, raw, max_age=ttl, expires=expires, path="/", secure=secure, httponly=True, samesite="Lax"
    )
    response.set_cookie(
        user_sessions.CSRF_COOKIE,
        principal.csrf_token,
        max_age=ttl,
        expires=expires,
        path="/",
        secure=secure,
        httponly=False,
        samesite="Lax",
    )
    return _no_store(response)


async def _current() -> user_sessions.SessionPrincipal:
    cookie = calls.current().cookie(user_sessions.COOKIE)
    if not cookie:
        raise ApiError(401, "unauthorized", "not signed in")
    return await authenticate_session(cookie)


@blueprint.get(PATH)
@operation(
    "The signed-in user of the app's session cookie",
    tags=TAGS,
    response=AppSession,
    errors=(401, 403),
    security=("session",),
)
async def current_session():
    return _no_store(_json(_out(await _current())))


@blueprint.delete(PATH)
@operation(
    "Sign out of the app: the session, and its sync tokens' next connections, end at once",
    tags=TAGS,
    errors=(401, 403),
    security=("session",),
)
async def sign_out():
    principal = await _current()  # the CSRF token is checked there (DELETE changes state)
    rt = runtime()
    await user_sessions.sign_out(rt.registry, principal)
    # its open websockets end too, on every node (a cluster event: string data only)
    await rt.publish("app_session_ended", customer_id=str(principal.customer_id), session_id=str(principal.session_id))
    response = Response(b"", status=204)
    secure = calls.current().over_tls
    for name, httponly in ((user_sessions.COOKIE, True), (user_sessions.CSRF_COOKIE, False)):
        response.delete_cookie(name, path="/", secure=secure, httponly=httponly, samesite="Lax")
    return _no_store(response)
