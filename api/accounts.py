"""Accounts: operator sessions (login/logout) and the users of a customer (customer admin key)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Literal

import asyncpg
from pydantic import Field
from quart import Blueprint

from api.current import runtime
from storage import customer_users as user_store
from storage import user_sessions
from sync_server.domain.accounts import operators, passwords

from . import pagination
from .auth import customer_required, customer_transaction, operator_required
from .calls import principal
from .errors import ApiError, conflict, found, not_found
from .openapi import field_error, operation
from .schemas import Email, Page, PageQuery, RequestModel, ResponseModel, omittable

blueprint = Blueprint("accounts", __name__)


class LoginRequest(RequestModel):
    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=1, max_length=1024)


class Operator(ResponseModel):
    id: uuid.UUID
    email: str
    role: Literal["admin", "staff"]


class Session(ResponseModel):
    token: str = Field(description="bearer token for operator routes; stored only as its SHA-256")
    expires_at: dt.datetime
    operator: Operator


@blueprint.post("/api/v1/auth/login")
@operation(
    "Operator login: email and password for a bearer token",
    tags=["operator auth"],
    body=LoginRequest,
    response=Session,
    errors=(401,),
)
async def login(body: LoginRequest):
    rt = runtime()
    try:
        session = await operators.sign_in(rt.db, body.email, body.password, rt.settings.operator_session_ttl)
    except operators.SignInRejected:
        raise ApiError(401, "invalid_credentials", "email or password is wrong") from None
    user = session.user
    return {
        "token": session.raw,
        "expires_at": session.expires_at,
        "operator": {"id": user["id"], "email": user["email"], "role": user["role"]},
    }


@blueprint.post("/api/v1/auth/logout")
@operator_required()
@operation("Operator logout: the token stops working at once", tags=["operator auth"])
async def logout():
    await operators.sign_out(runtime().db, principal().token_id)


@blueprint.get("/api/v1/auth/me")
@operator_required()
@operation("The operator behind the token", tags=["operator auth"], response=Operator)
async def me():
    p = principal()
    return {"id": p.user_id, "email": p.email, "role": p.role}


# --- users of a customer -------------------------------------------------------------------------

USER_TAGS = ["customer users"]
Role = Literal["admin", "member", "viewer"]


class UserCreate(RequestModel):
    email: Email
    name: str = Field("", max_length=200)
    role: Role = "member"
    password: str | None = Field(None, min_length=8, max_length=1024)


class UserUpdate(RequestModel):
    email: Email = omittable()
    name: str = omittable(max_length=200)
    role: Role = omittable()
    password: str | None = Field(None, min_length=8, max_length=1024, description="null removes the password")


class UserQuery(PageQuery):
    role: Role | None = None


class User(ResponseModel):
    id: uuid.UUID
    email: str
    name: str
    role: Role
    created_at: dt.datetime
    updated_at: dt.datetime


def _email_taken() -> ApiError:
    return conflict("email_taken", "a user with this email (in any letter case) already exists", field="email")


async def _hash(password: str | None) -> str | None:
    return None if password is None else await asyncio.to_thread(passwords.hash_password, password)


@blueprint.post("/api/v1/users")
@customer_required("admin")
@operation(
    "Create a user of this customer (email unique, any letter case)",
    tags=USER_TAGS,
    body=UserCreate,
    response=User,
    status=201,
    errors=(409,),
)
async def create_user(body: UserCreate):
    password_hash = await _hash(body.password)
    try:
        async with customer_transaction() as conn:
            return dict(
                await user_store.insert(
                    conn,
                    principal().customer_id,
                    email=body.email,
                    name=body.name,
                    role=body.role,
                    password_hash=password_hash,
                )
            )
    except asyncpg.UniqueViolationError:
        raise _email_taken() from None


@blueprint.get("/api/v1/users")
@customer_required("admin")
@operation("List users of this customer", tags=USER_TAGS, query=UserQuery, response=Page[User])
async def list_users(query: UserQuery):
    async with customer_transaction() as conn:
        rows = await user_store.list_page(
            conn, role=query.role, after=pagination.decode(query.cursor), limit=query.limit
        )
    return pagination.page(rows, query.limit)


@blueprint.get("/api/v1/users/<uuid:user_id>")
@customer_required("admin")
@operation("Show a user", tags=USER_TAGS, response=User)
async def show_user(user_id: uuid.UUID):
    async with customer_transaction() as conn:
        row = await user_store.get(conn, user_id)
    return found(row, "user")


@blueprint.patch("/api/v1/users/<uuid:user_id>")
@customer_required("admin")
@operation("Update a user", tags=USER_TAGS, body=UserUpdate, response=User, errors=(409,))
async def update_user(user_id: uuid.UUID, body: UserUpdate):
    changes = body.model_dump(exclude_unset=True)
    for required in ("email", "name", "role"):
        if required in changes and changes[required] is None:
            raise field_error("body", required, "must not be null")
    set_password = "password" in changes
    password_hash = await _hash(changes.get("password"))
    try:
        async with customer_transaction() as conn:
            current = await user_store.get(conn, user_id, for_update=True)
            if current is None:
                raise not_found("user")
            merged = {**dict(current), **changes}
            # a new password (or none) ends the user's app sessions at once
            ended = await user_sessions.revoke_user(conn, user_id) if set_password else []
            row = await user_store.update(
                conn,
                user_id,
                email=merged["email"],
                name=merged["name"],
                role=merged["role"],
                password_hash=password_hash,
                set_password=set_password,
            )
    except asyncpg.UniqueViolationError:
        raise _email_taken() from None
    customer_id = str(principal().customer_id)
    for session_id in ended:  # their open websockets too, on every node (a cluster event: string data only)
        await runtime().publish("app_session_ended", customer_id=customer_id, session_id=str(session_id))
    return found(row, "user")


@blueprint.delete("/api/v1/users/<uuid:user_id>")
@customer_required("admin")
@operation("Delete a user", tags=USER_TAGS)
async def delete_user(user_id: uuid.UUID):
    async with customer_transaction() as conn:
        deleted = await user_store.delete(conn, user_id)
    if not deleted:
        raise not_found("user")
