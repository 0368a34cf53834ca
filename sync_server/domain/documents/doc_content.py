"""A Yjs document's top-level types as JSON, for readers that do not speak Yjs.

A doc received as an update does not say which type each root is (Yjs types roots on first use), so
each root is read the way its content shows: keyed entries -> object (Y.Map), text -> string
(Y.Text), XML nodes -> their XML text (Y.XmlFragment), otherwise a list (Y.Array). Works on a
private copy, never on a room's live doc.

Yjs holds values JSON has no word for; each is written as a one-key object (a marker), at any depth:
  binary (Uint8Array)            {"$binary": "<standard base64>"}
  NaN, Infinity, -Infinity       {"$float": "NaN" | "Infinity" | "-Infinity"}  (JSON.parse refuses them)
  a subdocument (Y.Doc)          {"$doc": "<its guid>"}
Nested Y.Text and XML types are written as their text. A map whose only key is one of these
markers reads the same as the marked value: `format=update` is the exact form. Documents nested
deeper than MAX_DEPTH are refused (TooDeep) rather than written partly.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import pycrdt

MAX_DEPTH = 100
_XML = (pycrdt.XmlFragment, pycrdt.XmlElement, pycrdt.XmlText)


class TooDeep(ValueError):
    """The document nests values deeper than MAX_DEPTH."""


def to_json(state: bytes) -> dict[str, Any]:
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    doc.apply_update(state)
    return {name: _root(doc, name) for name in list(doc.keys())}


def _root(doc: pycrdt.Doc, name: str) -> Any:
    as_map = doc.get(name, type=pycrdt.Map)
    if len(as_map):
        return _value(as_map, 0)
    as_text = str(doc.get(name, type=pycrdt.Text))
    if as_text:
        return as_text
    items = list(doc.get(name, type=pycrdt.Array))
    if any(isinstance(item, _XML) for item in items):
        return str(doc.get(name, type=pycrdt.XmlFragment))
    return [_value(item, 1) for item in items]


def _value(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise TooDeep(f"document nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$float": "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$binary": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (dict, pycrdt.Map)):
        return {str(key): _value(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple, pycrdt.Array)):
        return [_value(item, depth + 1) for item in value]
    if isinstance(value, (pycrdt.Text, *_XML)):
        return str(value)
    if isinstance(value, pycrdt.Doc):
        return {"$doc": str(value.guid)}
    return {"$unsupported": type(value).__name__}
