"""The one error format: {"error": {"code": "snake_case", "message": "...", "details": {...}}}.

Handlers raise ApiError (or let a validation error through); nothing ever answers with a stack trace.
"""
from __future__ import annotations

from typing import Any

import asyncpg
import structlog
from quart import Quart, jsonify
from werkzeug.exceptions import HTTPException

log = structlog.get_logger("api.errors")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}  # e.g. Retry-After on 429


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _snake(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_") or "http_error"


def reply(err: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, error body and extra headers for any exception a request raised (both the REST
    endpoint and Quart's error handlers answer through this)."""
    if isinstance(err, ApiError):
        return err.status, error_body(err.code, err.message, err.details), err.headers
    if isinstance(err, HTTPException):
        headers = {name: value for name, value in err.get_headers()  # e.g. Allow on 405
                   if name.lower() != "content-type"}
        return err.code or 500, error_body(_snake(err.name), err.description or err.name), headers
    if isinstance(err, asyncpg.DataError):
        # A value the schema let through but PostgreSQL cannot store (e.g. a NUL character in text).
        return 422, error_body("invalid_value", "a value cannot be stored", {"reason": str(err)}), {}
    log.exception("unhandled_error", error=repr(err))
    return 500, error_body("internal_error", "internal server error"), {}


def install(app: Quart) -> None:
    @app.errorhandler(Exception)
    async def _error(err: Exception):
        status, body, headers = reply(err)
        return jsonify(body), status, headers


def conflict(code: str, message: str, **details: Any) -> ApiError:
    return ApiError(409, code, message, details)
