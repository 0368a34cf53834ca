"""The Runtime serving the current request: set by api.rest_endpoint for every /api/v1 operation,
otherwise the one the composition root stored on the Quart app (`app.extensions["webhost"]`)."""

from __future__ import annotations

from contextvars import ContextVar, Token

from quart import current_app

from sync_server.domain.runtime import Runtime

_serving: ContextVar[Runtime] = ContextVar("runtime")


def serving(rt: Runtime) -> Token[Runtime]:
    """Mark `rt` as the runtime of the current task's request (endpoints that answer without a
    Quart app context: api.rest_endpoint); returns the token to reset."""
    return _serving.set(rt)


def done_serving(token: Token[Runtime]) -> None:
    _serving.reset(token)


def runtime() -> Runtime:
    """The Runtime of the app handling the current request or websocket."""
    rt = _serving.get(None)
    return rt if rt is not None else current_app.extensions["webhost"]
