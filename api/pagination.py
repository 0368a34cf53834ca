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
from .rendered import Rendered

After = tuple[dt.datetime, uuid.UUID] | tuple[None, None]


def encode_parts(*parts: Any) -> str:
    """The one cursor codec: a cursor is base64url JSON of the last row's sort key, a timestamp
    first (ISO 8601, with its offset), then e.g. the row id (lists here, tracking's positions and
    events)."""
    raw = json.dumps(
        [p.isoformat() if isinstance(p, dt.datetime) else p for p in parts], separators=(",", ":")
    ).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_parts(cursor: str, size: int, convert: Callable[[list], list] = lambda parts: parts) -> list:
    """The `size` parts of a cursor made by encode_parts, the first as an aware datetime, then
    `convert` (a ValueError/TypeError there is a bad cursor too); 422 on anything else."""
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(parts, list) or len(parts) != size:
            raise ValueError("wrong shape")
        parts[0] = dt.datetime.fromisoformat(parts[0])
        if parts[0].tzinfo is None:
            raise ValueError("naive timestamp")
        return convert(parts)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise field_error("query", "cursor", "not a cursor returned by this list") from None


def encode(created_at: dt.datetime, row_id: Any) -> str:
    return encode_parts(created_at, str(row_id))


def decode(cursor: str | None) -> After:
    """(created_at, id) of a list cursor; (None, None) for the first page."""
    if not cursor:
        return None, None
    when, row_id = decode_parts(cursor, 2, lambda parts: [parts[0], uuid.UUID(parts[1])])
    return when, row_id


def page(rows: Sequence[Any], limit: int, shape: Callable[[Any], Any] = dict) -> dict:
    """{"data": [...], "next_cursor": ...} from up to limit + 1 rows."""
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return {"data": [shape(r) for r in rows], "next_cursor": cursor}


def rendered_page(rows: Sequence[Any], limit: int) -> Rendered:
    """The page body from up to limit + 1 rows of (created_at, id, json) (storage.json_rows.page_query):
    the objects as PostgreSQL wrote them, the same bytes `page` and the response model would give."""
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = json.dumps(encode(rows[-1]["created_at"], rows[-1]["id"])) if more and rows else "null"
    data = ",".join([r["json"] for r in rows])
    return Rendered(f'{{"data":[{data}],"next_cursor":{cursor}}}'.encode())
