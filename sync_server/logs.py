"""structlog, configured once: JSON lines in production, a readable console in development.

Request, tenant and room ids travel in contextvars (`bind`), so every line logged while handling a
request or a websocket message carries them without being passed around.
"""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import Processor

_configured = False


def configure(log_format: str = "console", level: str = "info") -> None:
    global _configured
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if log_format == "json":
        renderer: list[Processor] = [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that use stdlib logging (hypercorn, asyncpg) go to stderr at the same level.
    logging.basicConfig(
        stream=sys.stderr, level=max(numeric, logging.WARNING), format="%(levelname)s %(name)s %(message)s"
    )
    _configured = True


def get(name: str | None = None) -> structlog.stdlib.BoundLogger:
    if not _configured:
        configure()
    return structlog.get_logger(name)


bind = structlog.contextvars.bind_contextvars
unbind = structlog.contextvars.unbind_contextvars
bound = structlog.contextvars.bound_contextvars
