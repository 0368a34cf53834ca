"""HTTP document API for server-side integrations (API key, tenant scoped):

GET  /api/v1/docs/{doc}                 the whole doc as one Yjs update (application/octet-stream),
                                         or `?format=json`: {"doc", "content": {root: JSON}}, where
                                         binary values are {"$binary": base64}, NaN/Infinity are
                                         {"$float": "NaN"|"Infinity"|"-Infinity"} and subdocuments
                                         {"$doc": guid} (sync_server.domain.documents.doc_content); 422
                                         `document_too_deep` past its nesting limit
POST /api/v1/docs/{doc}/updates         apply a Yjs update (raw body, or JSON {"update": base64});
                                         answered once the update is durable, relayed to live peers
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Literal

from pydantic import Field
from quart import Blueprint, Response

from api.current import runtime
from sync_server.domain.documents import doc_content
from sync_server.sync import protocol, strict_json
from sync_server.sync.endpoint import parse_path

from . import calls
from .auth import customer_required
from .calls import principal
from .errors import ApiError
from .openapi import operation
from .schemas import RequestModel, ResponseModel

blueprint = Blueprint("docs", __name__, url_prefix="/api/v1/docs")

MAX_UPDATE_BYTES = 8 * 1024 * 1024
TAGS = ["documents"]
UPDATE_BYTES = {"type": "string", "format": "binary", "description": "a Yjs update (v1 encoding)"}


class DocQuery(RequestModel):
    format: Literal["update", "json"] = Field("update", description="update: the Yjs bytes; json: the content")


class DocContent(ResponseModel):
    doc: str
    content: dict = Field(description="each root as JSON ($binary, $float and $doc mark what JSON cannot hold)")


class UpdateJson(RequestModel):
    update: str = Field(description="the Yjs update, base64")


class UpdateApplied(ResponseModel):
    doc: str
    applied_bytes: int
    state_vector: str = Field(description="the document's state vector after the update, base64")


def _doc_name(doc: str) -> str:
    if parse_path(f"/sync/x/{doc}") is None:
        raise ApiError(
            422,
            "validation_error",
            "invalid document name",
            {"fields": {"doc": "letters, digits, _.:@=+- and / between parts, up to 256 chars"}},
        )
    return doc


@blueprint.get("/<path:doc>")
@customer_required("sync:read")
@operation(
    "Read a document: its Yjs state (application/octet-stream) or, with format=json, its content",
    tags=TAGS,
    query=DocQuery,
    response=DocContent,
    content={"application/octet-stream": UPDATE_BYTES},
)
async def get_doc(doc: str, query: DocQuery):
    doc = _doc_name(doc)
    fmt = query.format
    room = await runtime().rooms.get(principal().customer_id, doc)
    state = room.ydoc.get_update()
    if fmt == "json":
        try:
            content = doc_content.to_json(state)
        except doc_content.TooDeep as exc:
            raise ApiError(
                422,
                "document_too_deep",
                str(exc),
                {"max_depth": doc_content.MAX_DEPTH, "hint": "read it with format=update"},
            ) from None
        return {"doc": doc, "content": content}
    return Response(state, content_type="application/octet-stream")


@blueprint.post("/<path:doc>/updates")
@customer_required("sync:write")
@operation(
    "Apply a Yjs update (answered once it is durable; relayed to live peers)",
    tags=TAGS,
    response=UpdateApplied,
    errors=(413,),
    raw_body={"application/octet-stream": UPDATE_BYTES, "application/json": UpdateJson.model_json_schema()},
)
async def post_update(doc: str):
    doc = _doc_name(doc)
    update = await _read_update()
    rooms = runtime().rooms
    room = await rooms.get(principal().customer_id, doc)
    try:
        await room.apply(update)
    except protocol.Malformed:
        raise ApiError(
            422, "validation_error", "body is not a valid Yjs update", {"fields": {"update": "invalid"}}
        ) from None
    await room.hooks.store(room)  # durable before we answer
    return {"doc": doc, "applied_bytes": len(update), "state_vector": base64.b64encode(room.ydoc.get_state()).decode()}


async def _read_update() -> bytes:
    """The raw body, or the JSON form {"update": base64} (with Content-Type: application/json); its
    422s keep the `fields` details this route always answered."""
    call = calls.current()
    declared = call.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_UPDATE_BYTES:
        raise ApiError(413, "payload_too_large", f"update larger than {MAX_UPDATE_BYTES} bytes")
    raw = await call.body()
    if call.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
        try:
            body = json.loads(raw, parse_constant=strict_json.refuse_constant)  # as Quart's get_json read it
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ApiError(422, "validation_error", "body must be a JSON object", {"fields": {"update": "required"}})
        unknown = sorted(set(body) - {"update"})
        if unknown:
            raise ApiError(422, "validation_error", "unknown fields", {"fields": {k: "unknown field" for k in unknown}})
        encoded = body.get("update")
        if not isinstance(encoded, str):
            raise ApiError(422, "validation_error", "update must be base64 text", {"fields": {"update": "required"}})
        try:
            update = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(
                422, "validation_error", "update is not valid base64", {"fields": {"update": "base64"}}
            ) from None
    else:
        update = raw
    if not update:
        raise ApiError(422, "validation_error", "empty update", {"fields": {"update": "required"}})
    if len(update) > MAX_UPDATE_BYTES:
        raise ApiError(413, "payload_too_large", f"update larger than {MAX_UPDATE_BYTES} bytes")
    return update
