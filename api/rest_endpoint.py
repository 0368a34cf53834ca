"""Every `@operation` route (the /api/v1 REST surface), served as a raw ASGI application in front of
Quart, the way sync_server.sync.endpoint serves websockets.

Why not through Quart: for a small JSON request Quart's machinery (request and app contexts, the
Request/Response wrappers and their header structures, hooks, signals, the per-request task that
watches for disconnects) cost about as much CPU as the handler's own work, and issue 4's budget at
500 req/s on two shared cores is below 1 ms per request. The route table, the converters, the
handlers, the auth decorators, `@operation` (validation, response model, OpenAPI) and the error
format are the same objects either way: werkzeug's matcher picks the view from `app.url_map`, the
view runs as registered. What is done here instead of in Quart: the call's headers/query/body
(api.calls), the request id (X-Request-ID echoed, bound in the log context), the rate limit, and
turning exceptions into the one error format (api.errors.reply).

Every route is declared with `@operation` (the /api/v1 surface, document bytes, tracker ingest,
health), so the OpenAPI document lists what is served. Quart is left with the OpenAPI document
itself, HEAD/OPTIONS, and paths or methods that do not match (404, 405, slash redirects answered
exactly as before). Those get the same Call, request id (set on the response start here) and rate
limit from here: one home each, no Quart hooks. Quart answers what its views raise through
api.errors.reply too (its error handler is the adapter); what escapes Quart
itself (a BaseException such as a Rust panic, which Quart does not catch) is answered here as a
JSON 500 as long as no response has started, instead of Hypercorn's empty one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout

from api.current import done_serving, serving
from sync_server import logs
from sync_server.sync import strict_json
from sync_server.sync.faults import answerable

from . import calls, rate_limits
from .errors import reply
from .openapi import Reply

log = structlog.get_logger("api.rest_endpoint")

Observe = Callable[[str, str, int, float], None]
METHODS = frozenset(("GET", "POST", "PUT", "PATCH", "DELETE"))  # HEAD and OPTIONS stay with Quart
JSON_TYPE = (b"content-type", b"application/json")


class RestEndpoint:
    """ASGI wrapper: HTTP requests for an `@operation` view are served here, the rest by `app`."""

    def __init__(self, app, quart: Quart, runtime, observe: Observe | None = None) -> None:
        self.app = app
        self.runtime = runtime
        self.observe = observe  # told (route template, method, status, seconds) of every request
        self.views = {
            endpoint: view
            for endpoint, view in quart.view_functions.items()
            if getattr(view, "__openapi__", None) is not None
        }
        self.routes = quart.url_map.bind("localhost")  # host matching is off: the name is never compared
        self.config = quart.config  # MAX_CONTENT_LENGTH and BODY_TIMEOUT, as Quart reads them

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # websockets, lifespan
            return
        if scope["method"] in METHODS:
            try:
                rule, args = self.routes.match(scope["path"], scope["method"], return_rule=True)
            except HTTPException:  # 404 / 405 / redirect: Quart answers those as it always did
                rule = None
            view = self.views.get(rule.endpoint) if rule is not None else None
            if view is not None and rule is not None:
                await self.serve(view, args, scope, receive, send, rule.rule)
                return
        await self.serve_quart(scope, receive, send)

    async def serve(self, view, args: Mapping[str, Any], scope, receive, send, route: str = "other") -> None:
        call: calls.Call = _call_of(scope, lambda: self._read_body(call, receive))
        entered, rt = calls.enter(call), serving(self.runtime)
        logs.bind(request_id=call.request_id)
        started, status = time.perf_counter(), 499  # 499: the client left before an answer
        try:
            try:
                await rate_limits.check(call)
                result = await view(**args)
            except ClientGone:
                return
            except BaseException as exc:
                if not answerable(exc):
                    raise
                status, body, headers = reply(exc)
                result = strict_json.dumps(body).encode(), status, headers
            status = result.status_code if isinstance(result, Response) else result[1]
            try:
                if isinstance(result, Response):
                    await _send_quart_response(result, call.request_id, send)
                else:
                    await _send(result, call.request_id, send)
            except BaseException as exc:  # mid-stream: the response cannot become an error any more
                if not answerable(exc):
                    raise
                log.error("response_failed", error=repr(exc), exc_info=exc)  # Hypercorn cuts the connection
        finally:
            logs.unbind("request_id", "customer_id")
            done_serving(rt)
            calls.leave(entered)
            if self.observe is not None:
                self.observe(route, scope["method"], status, time.perf_counter() - started)

    async def serve_quart(self, scope, receive, send) -> None:
        """A request Quart serves, with its Call made here; a failure that escapes Quart is answered
        (JSON 500) if the response has not started, and logged either way."""
        call = _call_of(scope, _quart_body)
        entered = calls.enter(call)
        logs.bind(request_id=call.request_id)
        started = False
        status, began = 500, time.perf_counter()
        request_id = (b"x-request-id", call.request_id.encode("latin-1"))

        async def watched(message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message.get("status", 500)
                message = {
                    **message,
                    "headers": [
                        *(h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"),
                        request_id,
                    ],
                }
            await send(message)

        try:
            rt = serving(self.runtime)
            try:
                await rate_limits.check(call)
            finally:
                done_serving(rt)
            await self.app(scope, receive, watched)
        except BaseException as exc:
            if not answerable(exc):
                raise
            customer_id = getattr(call.principal, "customer_id", None)  # bound in Quart's task, not here
            if customer_id is not None:
                logs.bind(customer_id=customer_id)
            if started:
                log.error("response_failed", error=repr(exc), exc_info=exc)
                return
            status, body, headers = reply(exc)
            await _send((strict_json.dumps(body).encode(), status, headers), call.request_id, send)
        finally:
            logs.unbind("request_id", "customer_id")
            calls.leave(entered)
            if self.observe is not None:  # unmatched paths, HEAD/OPTIONS, the OpenAPI document: one label
                self.observe("other", scope["method"], status, time.perf_counter() - began)

    async def _read_body(self, call: calls.Call, receive) -> bytes:
        limit = self.config.get("MAX_CONTENT_LENGTH")
        declared = call.headers.get("content-length")
        if limit is not None and declared and declared.isdigit() and int(declared) > limit:
            raise RequestEntityTooLarge()
        try:
            async with asyncio.timeout(self.config.get("BODY_TIMEOUT")):  # no task per read, unlike wait_for
                return await _receive_body(receive, limit)
        except TimeoutError:
            raise RequestTimeout() from None


def _call_of(scope, read) -> calls.Call:
    return calls.Call(
        scope["method"],
        scope["path"],
        _headers(scope),
        scope.get("query_string", b""),
        (scope.get("client") or (None,))[0],
        read,
        scope.get("scheme", "http"),
    )


async def _quart_body() -> bytes:
    return await request.get_data(cache=True, as_text=False, parse_form_data=False)


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody to answer."""


async def _send(result: Reply, request_id: str, send) -> None:
    body, status, headers = result
    head = [JSON_TYPE] if status != 204 else []
    head += [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in headers.items()
        if name.lower() != "content-type"
    ]
    head.append((b"x-request-id", request_id.encode("latin-1")))
    if status != 204:
        head.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def _receive_body(receive, limit: int | None) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise RequestEntityTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_quart_response(response: Response, request_id: str, send) -> None:
    """A handler's own Response (streamed exports), body chunk by chunk."""
    response.headers["X-Request-ID"] = request_id
    head = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in response.headers.items()]
    await send({"type": "http.response.start", "status": response.status_code, "headers": head})
    async with response.response as body:
        async for chunk in body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _headers(scope) -> dict[str, str]:
    """Header names lower-cased; the first of repeated headers wins (as werkzeug's get does)."""
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in reversed(scope["headers"])}


def install(app: Quart, runtime, observe: Observe | None = None) -> None:
    """Serve `@operation` routes from ASGI; what Quart still serves gets the same call, request id
    and rate limit from here (no Quart hooks). Call after every blueprint is registered (the route
    table is read once). `observe(route template, method, status, seconds)`: every request (metrics)."""
    app.asgi_app = RestEndpoint(app.asgi_app, app, runtime, observe)  # type: ignore[method-assign]  # Quart's documented way to wrap its ASGI app
