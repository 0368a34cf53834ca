"""Rows rendered as JSON by PostgreSQL: a list page's objects built in the query, so the node
passes bytes through instead of decoding every column (asyncpg), building a dict, validating and
dumping it again (pydantic). Measured on a list of 100 vehicles: ~7 us of server CPU per row that
way (bench/RESULTS_REST.md round 7); PostgreSQL builds the same text for far less.

The text is what pydantic writes for the same row (api/rendered.py derives the fields from the
response model, and tests/rest/test_rendered_rows.py compares both renderings): uuids and text
as JSON strings, timestamps as pydantic writes an aware UTC datetime (`...T03:04:05Z`, or with
six digits of microseconds when there are any), jsonb as PostgreSQL prints it (the same value,
with a space after `:` and `,`), NULL as null.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Literal

Kind = Literal["uuid", "text", "json", "timestamp", "integer", "boolean"]

# SQL that renders one column as JSON text; {c} is the qualified column.
_RENDER: dict[str, str] = {
    "uuid": "('\"' || {c}::text || '\"')",
    "text": "to_json({c}::text)::text",
    "json": "{c}::text",
    "integer": "{c}::text",
    "boolean": "{c}::text",
    # pydantic's form of an aware datetime in UTC: no fraction on a whole second, else six digits.
    "timestamp": (
        "('\"' || to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') "
        "|| CASE WHEN date_trunc('second', {c}) = {c} THEN '' "
        "ELSE to_char({c} AT TIME ZONE 'UTC', '.US') END || 'Z\"')"
    ),
}


@dataclass(frozen=True)
class Field:
    """One column of a rendered object: its name (the column's and the JSON key's), how it renders,
    whether it may be NULL."""

    name: str
    kind: Kind
    nullable: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.kind not in _RENDER:
            raise ValueError(f"not a column name and kind: {self.name!r}, {self.kind!r}")

    def sql(self, alias: str) -> str:
        value = _RENDER[self.kind].format(c=f"{alias}.{self.name}")
        return f"COALESCE({value}, 'null')" if self.nullable else value


def object_sql(fields: tuple[Field, ...], alias: str) -> str:
    """SQL for the JSON object of one row of `alias` with `fields` in order (text, not json: the
    node sends it as it is)."""
    parts = []
    for i, f in enumerate(fields):
        key = ("{" if i == 0 else ",") + json.dumps(f.name) + ":"  # names are identifiers: no quote in them
        parts.append(f"'{key}' || {f.sql(alias)}")
    return "(" + " || ".join(parts) + " || '}')"


_PAGE_SELECT = "SELECT page.* FROM "


@cache
def page_query(query: str, fields: tuple[Field, ...]) -> str:
    """A list page query (`SELECT page.* FROM ... AS page ORDER BY ...`, storage.vehicles._PAGE)
    that returns (created_at, id, json) per row instead: the sort key for the cursor, and the object."""
    if not query.startswith(_PAGE_SELECT):
        raise ValueError("a page query starts with 'SELECT page.* FROM'")
    head = f"SELECT page.created_at, page.id, {object_sql(fields, 'page')} AS json FROM "
    return head + query[len(_PAGE_SELECT) :]
