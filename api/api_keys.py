"""API keys (customer admin key): create (the key is shown once), list (display prefix only),
show, revoke. And sync tokens: a key with a sync permission mints the short-lived token its apps
pass to the websocket endpoint."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from pydantic import Field, field_validator
from quart import Blueprint

from api.current import runtime
from storage import api_keys as key_store
from sync_server.domain.accounts import api_keys, sync_tokens, user_sessions

from . import pagination
from .auth import customer_required
from .calls import principal
from .errors import ApiError, found, not_found
from .openapi import operation
from .schemas import Page, PageQuery, RequestModel, ResponseModel

blueprint = Blueprint("api_keys", __name__)
TAGS = ["api keys"]

Permission = Literal[api_keys.PERMISSIONS]  # type: ignore[valid-type]


class ApiKeyCreate(RequestModel):
    name: str = Field("", max_length=100)
    permissions: list[Permission] = Field(min_length=1, max_length=len(api_keys.PERMISSIONS))
    environment: Literal["live", "test"] = "live"
    expires_at: dt.datetime | None = Field(None, description="absent: never expires")

    @field_validator("expires_at")
    @classmethod
    def _future(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("must include a timezone")
        if value <= dt.datetime.now(dt.UTC):
            raise ValueError("must be in the future")
        return value


class ApiKeyQuery(PageQuery):
    include_revoked: bool = False


class ApiKey(ResponseModel):
    id: uuid.UUID
    name: str
    prefix: str = Field(description="the first characters of the key, for recognising it")
    environment: Literal["live", "test"]
    permissions: list[str]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="the whole key; shown only in this response")


class SyncTokenRequest(RequestModel):
    docs: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=100, description="document names or globs, e.g. fleet, tracks/*"
    )
    mode: Literal["rw", "r"] = "rw"
    ttl_seconds: int = Field(3600, ge=1, le=sync_tokens.MAX_TTL_SECONDS)


class SyncToken(ResponseModel):
    token: str
    expires_at: dt.datetime
    customer_slug: str = Field(description="the {customer_slug} of ws://HOST/sync/{customer_slug}/{doc}")


def key_out(row, raw: str | None = None) -> dict:
    out = dict(row)
    if raw is not None:
        out["key"] = raw
    return out


@blueprint.post("/api/v1/api-keys")
@customer_required("admin")
@operation(
    "Create an API key (the key is in this response only)",
    tags=TAGS,
    body=ApiKeyCreate,
    response=ApiKeyCreated,
    status=201,
)
async def create_api_key(body: ApiKeyCreate):
    raw = api_keys.generate(body.environment)
    customer_id = principal().customer_id
    async with runtime().db.tenant(customer_id) as conn:
        row = await key_store.insert(
            conn,
            customer_id=customer_id,
            name=body.name,
            prefix=api_keys.display_prefix(raw),
            key_hash=api_keys.digest(raw),
            environment=body.environment,
            permissions=list(dict.fromkeys(body.permissions)),
            expires_at=body.expires_at,
        )
    return key_out(row, raw)


@blueprint.get("/api/v1/api-keys")
@customer_required("admin")
@operation("List API keys (display prefix only)", tags=TAGS, query=ApiKeyQuery, response=Page[ApiKey])
async def list_api_keys(query: ApiKeyQuery):
    async with runtime().db.tenant(principal().customer_id) as conn:
        rows = await key_store.list_page(
            conn, include_revoked=query.include_revoked, after=pagination.decode(query.cursor), limit=query.limit
        )
    return pagination.page(rows, query.limit)


@blueprint.get("/api/v1/api-keys/<uuid:key_id>")
@customer_required("admin")
@operation("Show an API key (display prefix only)", tags=TAGS, response=ApiKey)
async def show_api_key(key_id: uuid.UUID):
    async with runtime().db.tenant(principal().customer_id) as conn:
        row = await key_store.get(conn, key_id)
    return found(row, "API key")


@blueprint.delete("/api/v1/api-keys/<uuid:key_id>")
@customer_required("admin")
@operation("Revoke an API key (it stays listed with revoked_at; include_revoked=true)", tags=TAGS)
async def revoke_api_key(key_id: uuid.UUID):
    if await api_keys.revoke(runtime(), principal().customer_id, key_id) is None:
        raise not_found("API key")


@blueprint.post("/api/v1/sync-tokens")
@customer_required()
@operation(
    "Mint a sync token for the websocket endpoint (mode rw needs sync:write, r needs sync:read)",
    tags=["sync"],
    body=SyncTokenRequest,
    response=SyncToken,
)
async def create_sync_token(body: SyncTokenRequest):
    caller = principal()
    allowed = caller.has("sync:write") or (body.mode == "r" and caller.has("sync:read"))
    if not allowed:
        needed = "sync:write" if body.mode == "rw" else "sync:read"
        raise ApiError(403, "forbidden", "credential lacks a required permission", {"missing": [needed]})
    ttl = body.ttl_seconds
    session_id = getattr(caller, "session_id", None)
    if session_id is not None:  # a dispatcher app session: the app's documents, short-lived tokens
        outside = [d for d in body.docs if d not in user_sessions.APP_DOCS]
        if outside:
            raise ApiError(403, "forbidden", "an app session may sync only the app's documents", {"docs": outside[:10]})
        ttl = min(ttl, runtime().settings.app_sync_token_ttl)
    token, expires = sync_tokens.mint(
        runtime().secret_key,
        customer_id=caller.customer_id,
        customer_slug=caller.customer_slug,
        docs=body.docs,
        mode=body.mode,
        ttl_seconds=ttl,
        session_id=session_id,  # the app's session: signing out ends the token's next connection too
    )
    return {
        "token": token,
        "expires_at": dt.datetime.fromtimestamp(expires, dt.UTC),
        "customer_slug": caller.customer_slug,
    }
