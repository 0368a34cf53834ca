"""Request and response schemas shared by every area: the strict base, the error body, pages.

Requests reject unknown fields (extra='forbid'); the OpenAPI document is generated from these
same classes, so what is documented is what is validated.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

T = TypeVar("T")


def _storable(value: Any, depth: int = 0) -> Any:
    """JSON that PostgreSQL's jsonb accepts: finite numbers, no NUL characters, bounded depth."""
    if depth > 20:
        raise ValueError("nested too deeply (at most 20 levels)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("strings must not contain NUL characters")
    if isinstance(value, dict):
        for key, item in value.items():
            _storable(key, depth + 1)
            _storable(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _storable(item, depth + 1)
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(_storable), Field(description="free-form JSON object")]
Email = Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", examples=["ops@example.com"])]


class RequestModel(BaseModel):
    """A request body or query string: unknown fields are an error. Bodies are validated strictly
    (a JSON string is never taken for a number), exactly as the published schema says."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def omittable(**constraints: Any) -> Any:
    """A field of an update body that may be left out (then it is None here and the stored value
    stays) but is never null on the wire: the published schema has no null and a null is a 422.
    Typed Any because the attribute is None exactly when the field was left out; handlers read
    `model_dump(exclude_unset=True)`."""
    return Field(None, **constraints)


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ErrorDetail(ResponseModel):
    code: str = Field(description="snake_case machine-readable code")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(ResponseModel):
    """The one error format of every non-2xx answer."""

    error: ErrorDetail


class FieldError(ResponseModel):
    location: str = Field(description="body, query or path")
    field: str = Field(description="dotted path to the offending field, e.g. center.lat or points.3")
    message: str
    type: str


class Page(ResponseModel, Generic[T]):
    """A page of a list; pass next_cursor back as `cursor` for the next page (null: no more)."""

    data: list[T]
    next_cursor: str | None


class PageQuery(RequestModel):
    limit: int = Field(50, ge=1, le=200, description="page size")
    cursor: str | None = Field(None, max_length=200, description="next_cursor of the previous page")


class Timestamps(ResponseModel):
    created_at: dt.datetime
    updated_at: dt.datetime
