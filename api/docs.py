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

from quart import Blueprint, Response, request

from sync_server.domain.documents import doc_content
from sync_server.node.runtime import runtime
from sync_server.sync import protocol
from sync_server.sync.endpoint import parse_path

from .auth import customer_required
from .calls import principal
from .errors import ApiError

blueprint = Blueprint("docs", __name__, url_prefix="/api/v1/docs")

MAX_UPDATE_BYTES = 8 * 1024 * 1024


def _doc_name(doc: str) -> str:
    if parse_path(f"/sync/x/{doc}") is None:
        raise ApiError(422, "validation_error", "invalid document name",
                       {"fields": {"doc": "letters, digits, _.:@=+- and / between parts, up to 256 chars"}})
    return doc


@blueprint.get("/<path:doc>")
@customer_required("sync:read")
async def get_doc(doc: str):
    doc = _doc_name(doc)
    fmt = request.args.get("format", "update")
    if fmt not in ("update", "json"):
        raise ApiError(422, "validation_error", "format must be 'update' or 'json'",
                       {"fields": {"format": "one of update, json"}})
    room = await runtime().rooms.get(principal().customer_id, doc)
    state = room.ydoc.get_update()
    if fmt == "json":
        try:
            content = doc_content.to_json(state)
        except doc_content.TooDeep as exc:
            raise ApiError(422, "document_too_deep", str(exc),
                           {"max_depth": doc_content.MAX_DEPTH, "hint": "read it with format=update"}) from None
        return {"doc": doc, "content": content}
    return Response(state, content_type="application/octet-stream")


@blueprint.post("/<path:doc>/updates")
@customer_required("sync:write")
async def post_update(doc: str):
    doc = _doc_name(doc)
    update = await _read_update()
    rooms = runtime().rooms
    room = await rooms.get(principal().customer_id, doc)
    try:
        await room.apply(update)
    except protocol.Malformed:
        raise ApiError(422, "validation_error", "body is not a valid Yjs update", {"fields": {"update": "invalid"}}) from None
    await room.hooks.store(room)  # durable before we answer
    return {"doc": doc, "applied_bytes": len(update),
            "state_vector": base64.b64encode(room.ydoc.get_state()).decode()}


async def _read_update() -> bytes:
    if request.content_length is not None and request.content_length > MAX_UPDATE_BYTES:
        raise ApiError(413, "payload_too_large", f"update larger than {MAX_UPDATE_BYTES} bytes")
    if request.mimetype == "application/json":
        body = await request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ApiError(422, "validation_error", "body must be a JSON object", {"fields": {"update": "required"}})
        unknown = sorted(set(body) - {"update"})
        if unknown:
            raise ApiError(422, "validation_error", "unknown fields", {"fields": {k: "unknown field" for k in unknown}})
        raw = body.get("update")
        if not isinstance(raw, str):
            raise ApiError(422, "validation_error", "update must be base64 text", {"fields": {"update": "required"}})
        try:
            update = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "validation_error", "update is not valid base64", {"fields": {"update": "base64"}}) from None
    else:
        update = await request.get_data()
    if not update:
        raise ApiError(422, "validation_error", "empty update", {"fields": {"update": "required"}})
    if len(update) > MAX_UPDATE_BYTES:
        raise ApiError(413, "payload_too_large", f"update larger than {MAX_UPDATE_BYTES} bytes")
    return update
