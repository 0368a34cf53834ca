"""Which failures a handler answers and which it lets through.

A request or websocket handler turns any failure of its own into an error answer (HTTP 500
`internal_error`, websocket close 1011) and the server carries on: one bad request never takes more
than itself down. That includes BaseExceptions that are not control flow, such as pyo3's
PanicException (a Rust panic inside pycrdt derives from BaseException, not Exception): escaping to
Hypercorn, one answers an empty non-JSON 500 and cancels the other tasks of its connection.
Only what asks a task or the process to stop is let through.
"""

from __future__ import annotations

import asyncio

LET_THROUGH = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


def answerable(exc: BaseException) -> bool:
    """True for a failure the handler answers itself; False for cancellation and shutdown."""
    return not isinstance(exc, LET_THROUGH)
