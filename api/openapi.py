"""Route contracts and the OpenAPI 3.1 document generated from them.

`@operation(...)` is the one place a route states its body, query and response schemas: the same
declaration validates the request (422 with field paths, unknown fields rejected), shapes the
response through its pydantic model, and is what `/api/openapi.json` publishes. Auth decorators
(api/auth.py) put `__auth__` on the view, so the security of each operation is read, not restated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Literal

from pydantic import BaseModel, RootModel, ValidationError
from pydantic.json_schema import models_json_schema
from quart import Blueprint, Quart, Response, current_app

from . import calls
from .errors import ApiError
from .rendered import Rendered
from .schemas import ErrorBody

blueprint = Blueprint("openapi", __name__)

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted: the work goes on in the background",
    204: "No Content",
    413: "Request body too large",
    415: "Body not sent as application/json",
    401: "Missing, malformed, unknown, revoked or expired credential",
    402: "Plan limit reached",
    403: "Credential lacks the permission, role or customer state required",
    404: "Not found (or not visible to this credential)",
    409: "Conflicts with the current state",
    422: "Validation failed; details.errors lists each field path",
    503: "Not ready",
}


# Who a route's credential kind lets in: customer routes take an API key or an app session cookie.
_SECURITY: dict[str, list[dict[str, list]]] = {
    "customer": [{"apiKey": []}, {"appSession": []}],
    "operator": [{"operatorToken": []}, {"operatorSession": []}],
    "session": [{"appSession": []}],
    "operator_session": [{"operatorSession": []}],
}


@dataclass
class Operation:
    summary: str
    tags: list[str]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None  # a pydantic model class (or parametrised generic), None for 204
    status: int = 200
    errors: tuple[int, ...] = ()
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    raw_body: dict[str, Any] | None = None  # media type -> schema of a body the handler reads itself
    content: dict[str, Any] = field(default_factory=dict)  # other media types of the success answer
    also: dict[int, Any] = field(default_factory=dict)  # other success statuses -> response model
    security: tuple[str, ...] = ()  # when the handler authenticates itself: "customer", "operator", "session"


def _loc(parts: tuple) -> str:
    return ".".join(str(p) for p in parts)


def validation_error(location: str, exc: ValidationError, discriminator: str | None = None) -> ApiError:
    """422 naming each field. For a body that is a discriminated union (`discriminator` names the tag
    field), pydantic prefixes each path with the tag value; the path clients see starts at the body."""
    errors = []
    for e in exc.errors(include_url=False):
        loc = e["loc"]
        if discriminator is not None:
            loc = (discriminator,) if e["type"].startswith("union_tag") else loc[1:]
        errors.append({"location": location, "field": _loc(loc), "message": e["msg"], "type": e["type"]})
    return validation_failed(errors)


def validation_failed(errors: list[dict], message: str = "request validation failed") -> ApiError:
    """The one 422 envelope of a request that fails validation: details.errors lists each problem
    as {location, field, message, type} (what the OpenAPI document promises for 422)."""
    return ApiError(422, "validation_failed", message, {"errors": errors})


def field_error(location: str, field_path: str, message: str, type_: str = "value_error") -> ApiError:
    return validation_failed([{"location": location, "field": field_path, "message": message, "type": type_}])


async def _parse_body(model: type[BaseModel]) -> BaseModel:
    raw = await calls.current().body()
    if not raw.strip():
        raise ApiError(422, "body_required", "a JSON request body is required (send {} for none of the fields)")
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors(include_url=False)):
            raise ApiError(422, "invalid_json", "request body is not valid JSON") from None
        discriminator = None
        if issubclass(model, RootModel):
            discriminator = getattr(model.model_fields["root"], "discriminator", None)
        raise validation_error("body", exc, discriminator if isinstance(discriminator, str) else None) from None


def _parse_query(model: type[BaseModel]) -> BaseModel:
    data: dict[str, Any] = {
        key: values[0] if len(values) == 1 else values for key, values in calls.current().query().items()
    }
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error("query", exc) from None


JSON = {"Content-Type": "application/json"}
Reply = tuple[bytes, int, dict[str, str]]  # body, status, headers: what Quart's views may return too


def _render(op: Operation, result: Any) -> Reply | Response:
    """The response, shaped by the declared model. A handler may instead return a Quart Response
    (streamed exports, document bytes: a media type declared in `content`); api.rest_endpoint sends
    those as they are, and `Rendered` bytes (api/rendered.py) go out as the body of `status`.
    `(value, status)` answers one of the other statuses declared in `also`."""
    if isinstance(result, Response):
        return result
    if isinstance(result, Rendered):  # PostgreSQL wrote it in the model's shape (api/rendered.py)
        return bytes(result), op.status, JSON
    if op.status == 204 or op.response is None:
        return b"", 204, {}
    model, status = op.response, op.status
    if isinstance(result, tuple):
        result, status = result
        model = op.also[status]
    body = result if isinstance(result, model) else model.model_validate(result)
    return body.model_dump_json().encode(), status, JSON


def operation(
    summary: str,
    *,
    tags: list[str],
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: Any = None,
    status: int = 200,
    errors: tuple[int, ...] = (),
    description: str = "",
    raw_body: dict[str, Any] | None = None,
    content: dict[str, Any] | None = None,
    also: dict[int, Any] | None = None,
    security: tuple[str, ...] = (),
):
    """Declare a route's contract; the handler receives `body=` / `query=` as validated models and
    returns a dict or model for `response` (or None for 204).

    For the few routes whose wire format is not one JSON object (document bytes, tracker protocols):
    `raw_body` documents a body the handler reads itself (`api.calls.current().body()`), keyed by
    media type; `content` documents other media types of the success answer (the handler returns a
    Response for them); `also` maps other success statuses to their models (the handler returns
    `(value, status)`); `security` names the credentials a handler that authenticates itself accepts."""
    op = Operation(
        summary,
        tags,
        body,
        query,
        response,
        status,
        errors,
        description,
        raw_body=raw_body,
        content=content or {},
        also=also or {},
        security=security,
    )

    def decorate(handler: Callable):
        @wraps(handler)
        async def wrapper(*args, **kwargs):
            if op.query is not None:
                kwargs["query"] = _parse_query(op.query)
            if op.body is not None:
                kwargs["body"] = await _parse_body(op.body)
            return _render(op, await handler(*args, **kwargs))

        wrapper.__openapi__ = op  # type: ignore[attr-defined]  # read back with getattr (build, rest_endpoint)
        return wrapper

    return decorate


# ---------------------------------------------------------------------------------------------
# The document

_PARAM = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_CONVERTER_SCHEMA = {
    "uuid": {"type": "string", "format": "uuid"},
    "int": {"type": "integer"},
    "string": {"type": "string"},
    None: {"type": "string"},
}


def _openapi_path(rule: str) -> tuple[str, list[dict]]:
    params = []
    for conv, name in _PARAM.findall(rule):
        params.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": dict(_CONVERTER_SCHEMA.get(conv or None, {"type": "string"})),
            }
        )
    return _PARAM.sub(lambda m: "{" + m.group(2) + "}", rule), params


def _query_parameters(model: type[BaseModel], schema: dict) -> list[dict]:
    out = []
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        prop = {k: v for k, v in prop.items() if k not in ("title",)}
        # `X | None = None`: absent means None; a query string cannot carry a JSON null.
        options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        if len(options) == 1:
            prop.update(options[0])
        elif options:
            prop["anyOf"] = options
        if prop.get("default", 0) is None:
            del prop["default"]
        description = prop.pop("description", None)
        param = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        out.append(param)
    return out


def build(app: Quart) -> dict:
    """The OpenAPI 3.1 document of every route declared with @operation."""
    ops: list[tuple[str, str, Operation, Any, list[dict]]] = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        op = getattr(view, "__openapi__", None)
        if op is None:
            continue
        path, params = _openapi_path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            ops.append((path, method.lower(), op, getattr(view, "__auth__", None), params))

    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [(ErrorBody, "serialization")]
    for _, _, op, _, _ in ops:
        if op.body is not None:
            models.append((op.body, "validation"))
        if op.query is not None:
            models.append((op.query, "validation"))
        if op.response is not None:
            models.append((op.response, "serialization"))
        models += [(model, "serialization") for model in op.also.values()]
    unique = list(dict.fromkeys(models))
    refs, defs = models_json_schema(unique, ref_template="#/components/schemas/{model}")
    components = defs.get("$defs", {})

    def ref(model, mode):
        return refs[(model, mode)]

    def error_response(status: int) -> dict:
        return {
            "description": _STATUS_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": ref(ErrorBody, "serialization")}},
        }

    paths: dict[str, dict] = {}
    for path, method, op, auth, params in ops:
        entry: dict[str, Any] = {
            "summary": op.summary,
            "tags": op.tags,
            "operationId": f"{method}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
        }
        if op.description:
            entry["description"] = op.description
        parameters = list(params)
        if op.query is not None:
            qref = ref(op.query, "validation")["$ref"].rsplit("/", 1)[1]
            parameters += _query_parameters(op.query, components[qref])
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(op.body, "validation")}},
            }
        elif op.raw_body and method != "get":
            entry["requestBody"] = {
                "required": True,
                "content": {media: {"schema": schema} for media, schema in op.raw_body.items()},
            }
        responses: dict[str, Any] = {}
        if op.response is None and op.content:  # only other media types (the web app's files)
            responses[str(op.status)] = {
                "description": _STATUS_TEXT.get(op.status, "OK"),
                "content": {media: {"schema": schema} for media, schema in op.content.items()},
            }
        elif op.status == 204 or op.response is None:
            responses["204"] = {"description": _STATUS_TEXT[204]}
        else:
            responses[str(op.status)] = {
                "description": _STATUS_TEXT.get(op.status, "OK"),
                "content": {
                    "application/json": {"schema": ref(op.response, "serialization")},
                    **{media: {"schema": schema} for media, schema in op.content.items()},
                },
            }
        for status, model in op.also.items():
            responses[str(status)] = {
                "description": _STATUS_TEXT.get(status, "OK"),
                "content": {"application/json": {"schema": ref(model, "serialization")}},
            }
        statuses = set(op.errors)
        kinds = (auth[0],) if auth is not None else op.security
        if kinds:
            statuses |= {401, 403}
            entry["security"] = [scheme for kind in kinds for scheme in _SECURITY[kind]]
            if auth is not None and auth[1]:
                entry["description"] = (entry.get("description", "") + f"\n\nRequires: {', '.join(auth[1])}.").strip()
        if op.body is not None or op.query is not None or op.raw_body:
            statuses.add(422)
        if params:
            statuses.add(404)
        for status in sorted(statuses):
            responses[str(status)] = error_response(status)
        entry["responses"] = responses
        paths.setdefault(path, {})[method] = entry

    for _, _, op, _, _ in ops:  # query models are expanded into parameters
        if op.query is not None:
            components.pop(ref(op.query, "validation")["$ref"].rsplit("/", 1)[1], None)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "WebHost Sync API",
            "version": current_app.config.get("API_VERSION", "1.0.0"),
            "description": "REST for operators (platform staff) and customers (API keys).",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A customer API key: whk_live_... or whk_test_...",
                },
                "operatorToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An operator session token from POST /api/v1/auth/login",
                },
                "appSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "whs_session",
                    "description": "A customer user's dispatcher-app session (POST /api/v1/app/session); "
                    "state-changing requests also send X-CSRF-Token",
                },
                "operatorSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "whs_operator",
                    "description": "An operator's console session (POST /api/v1/operator/session); "
                    "state-changing requests also send X-CSRF-Token",
                },
            },
        },
    }


@blueprint.get("/api/openapi.json")
async def openapi_document():
    doc = current_app.extensions.get("openapi_document")
    if doc is None:
        doc = current_app.extensions["openapi_document"] = json.dumps(build(current_app))
    return Response(doc, content_type="application/json")
