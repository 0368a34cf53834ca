"""The one error format: {"error": {"code": "snake_case", "message": "...", "details": {...}}}.

Handlers raise ApiError (or let a validation error through); nothing ever answers with a stack trace.
Anything else a handler raises, down to a BaseException that is not cancellation or shutdown
(sync_server.sync.faults), answers 500 `internal_error` and is logged once, with its traceback and the
request id, whoever answers (api.rest_endpoint for every @operation route; Quart's error handler,
installed below, for the HEAD/OPTIONS/404/405 it still serves).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

import asyncpg
import structlog
from quart import Quart, jsonify
from werkzeug.exceptions import HTTPException, InternalServerError

log = structlog.get_logger("api.errors")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}  # e.g. Retry-After on 429


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def found(row: Mapping[str, Any] | None, what: str = "resource") -> dict[str, Any]:
    """The repository's row as a dict, or 404 when it found none."""
    if row is None:
        raise not_found(what)
    return dict(row)


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _snake(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_") or "http_error"


def reply(err: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, error body and extra headers for any exception a request raised (both the REST
    endpoint and Quart's error handlers answer through this)."""
    if isinstance(err, ApiError):
        return err.status, error_body(err.code, err.message, err.details), err.headers
    if isinstance(err, InternalServerError) and err.original_exception is not None:
        # Quart's wrapper of what failed outside the view's own error handling (e.g. a response
        # value that cannot be written as JSON): the original is what to log.
        return unexpected(err.original_exception)
    if isinstance(err, HTTPException):
        headers = {
            name: value
            for name, value in err.get_headers()  # e.g. Allow on 405
            if name.lower() != "content-type"
        }
        return err.code or 500, error_body(_snake(err.name), err.description or err.name), headers
    if isinstance(err, asyncpg.DataError):
        # A value the schema let through but PostgreSQL cannot store (e.g. a NUL character in text).
        return 422, error_body("invalid_value", "a value cannot be stored", {"reason": str(err)}), {}
    return unexpected(err)


def unexpected(err: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """500 internal_error for a failure nobody expected: logged (traceback, request and tenant ids
    from the log context), never shown."""
    log.error("unhandled_error", error=repr(err), exc_info=err)
    return 500, error_body("internal_error", "internal server error"), {}


def install(app: Quart) -> None:
    @app.errorhandler(Exception)
    async def _error(err: Exception):
        status, body, headers = reply(err)
        return jsonify(body), status, headers

    def _log_exception(_exc_info: tuple[type, BaseException, TracebackType] | tuple[None, None, None]) -> None:
        """Quart's own log of an unhandled exception (stdlib, unstructured, no request id): the error
        handler above logs it instead, once."""

    app.log_exception = _log_exception  # type: ignore[method-assign,assignment]  # an instance attribute in place of the bound method


def conflict(code: str, message: str, **details: Any) -> ApiError:
    return ApiError(409, code, message, details)
