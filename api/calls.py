"""The API call being served: what handlers and the auth decorators read (headers, query, body,
the authenticated principal, the request id), whichever way the request came in.

Every operation is served by api.rest_endpoint straight from ASGI (no Quart request or `g`); what
Quart still serves (HEAD/OPTIONS, 404/405, the OpenAPI document) gets a Call made by the endpoint
too, inherited by Quart's request task. One contextvar holds it for the request's task.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qsl

_current: ContextVar[Call] = ContextVar("api_call")

REQUEST_ID_MAX = 64


class Call:
    __slots__ = (
        "method",
        "path",
        "headers",
        "query_string",
        "remote_addr",
        "scheme",
        "request_id",
        "principal",
        "_read",
        "_body",
    )

    def __init__(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        query_string: bytes,
        remote_addr: str | None,
        read: Callable[[], Awaitable[bytes]],
        scheme: str = "http",
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers  # lower-case names; the first value of a repeated header
        self.query_string = query_string
        self.remote_addr = remote_addr
        self.scheme = scheme  # "https" when served over TLS (the ASGI scope's)
        self.request_id = (headers.get("x-request-id") or uuid.uuid4().hex)[:REQUEST_ID_MAX]
        self.principal: Any = None  # set by api.auth's decorators
        self._read = read
        self._body: bytes | None = None

    async def body(self) -> bytes:
        """The whole request body (read once, on first use)."""
        if self._body is None:
            self._body = await self._read()
        return self._body

    @property
    def over_tls(self) -> bool:
        """Served over TLS here, or by the proxy in front (X-Forwarded-Proto: https)."""
        return self.scheme in ("https", "wss") or self.headers.get("x-forwarded-proto", "").lower() == "https"

    def cookie(self, name: str) -> str | None:
        """One cookie of the request (the first of that name), without unquoting."""
        for part in self.headers.get("cookie", "")[:8192].split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value.strip()
        return None

    def query(self) -> dict[str, list[str]]:
        """Query parameters, each with every value given (as werkzeug parses them)."""
        out: dict[str, list[str]] = {}
        for key, value in parse_qsl(self.query_string.decode("latin-1"), keep_blank_values=True, errors="replace"):
            out.setdefault(key, []).append(value)
        return out


def enter(call: Call):
    """Make `call` the current one; returns the token for `leave`."""
    return _current.set(call)


def leave(token) -> None:
    _current.reset(token)


def current() -> Call:
    return _current.get()


def current_or_none() -> Call | None:
    return _current.get(None)


def principal() -> Any:
    """Who is calling (api.auth put it there: an ApiKeyPrincipal or an OperatorPrincipal)."""
    return _current.get().principal
