"""Responses whose JSON PostgreSQL wrote (storage/json_rows.py): a handler returns `Rendered`
bytes and api.openapi sends them as they are, instead of validating and dumping a model.

`fields_of(model)` reads the columns from the response model itself, so the rendered object has
the model's fields, in its order, in the form pydantic writes them; it refuses a model whose
rendering SQL cannot reproduce (floats, nested models, unions, aliases, custom serializers).
"""

from __future__ import annotations

import datetime as dt
import types
import uuid
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from storage.json_rows import Field, Kind


class Rendered(bytes):
    """A complete JSON response body, already in the shape of the operation's response model."""


def _kind(annotation: Any) -> Kind:
    if annotation is uuid.UUID:
        return "uuid"
    if annotation is str or (
        get_origin(annotation) is Literal and all(isinstance(a, str) for a in get_args(annotation))
    ):
        return "text"
    if annotation is dt.datetime:
        return "timestamp"
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "integer"
    if annotation is dict or get_origin(annotation) is dict:
        return "json"
    raise TypeError(f"PostgreSQL does not render {annotation!r} as pydantic does")


@cache
def fields_of(model: type[BaseModel]) -> tuple[Field, ...]:
    """The rendered columns of `model`'s fields; TypeError for a model they cannot reproduce."""
    decorators = model.__pydantic_decorators__
    if decorators.field_serializers or decorators.model_serializers or model.model_computed_fields:
        raise TypeError(f"{model.__name__} has custom serialization")
    fields = []
    for name, info in model.model_fields.items():
        if info.alias not in (None, name) or info.serialization_alias not in (None, name):
            raise TypeError(f"{model.__name__}.{name} is aliased")
        annotation, nullable = info.annotation, False
        if get_origin(annotation) in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                raise TypeError(f"{model.__name__}.{name} is a union")
            annotation, nullable = members[0], True
        try:
            fields.append(Field(name, _kind(annotation), nullable))
        except TypeError as exc:
            raise TypeError(f"{model.__name__}.{name}: {exc}") from None
    return tuple(fields)
