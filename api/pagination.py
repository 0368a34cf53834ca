"""Cursor pagination: lists are ordered by (created_at, id); the cursor is the last row's pair,
opaque to clients (base64url JSON). Repositories fetch limit + 1 rows to know if more follow."""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from .openapi import field_error

After = tuple[dt.datetime, uuid.UUID] | tuple[None, None]


def encode(created_at: dt.datetime, row_id: Any) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(cursor: str | None) -> After:
    if not cursor:
        return None, None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, row_id = json.loads(raw)
        parsed = dt.datetime.fromisoformat(when)
        if parsed.tzinfo is None:
            raise ValueError("naive timestamp")
        return parsed, uuid.UUID(row_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise field_error("query", "cursor", "not a cursor returned by this list") from None


def page(rows: Sequence[Any], limit: int, shape: Callable[[Any], Any] = dict) -> dict:
    """{"data": [...], "next_cursor": ...} from up to limit + 1 rows."""
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return {"data": [shape(r) for r in rows], "next_cursor": cursor}
