"""A Yjs document's top-level types as JSON, for readers that do not speak Yjs.

A doc received as an update does not say which type each root is (Yjs types roots on first use), so
each root is read the way its content shows: keyed entries -> object (Y.Map), text -> string
(Y.Text), otherwise a list (Y.Array). Works on a private copy, never on a room's live doc.
"""
from __future__ import annotations

from typing import Any

import pycrdt


def to_json(state: bytes) -> dict[str, Any]:
    doc = pycrdt.Doc()
    doc.apply_update(state)
    out: dict[str, Any] = {}
    for name in list(doc.keys()):
        as_map = doc.get(name, type=pycrdt.Map).to_py()
        if as_map:
            out[name] = as_map
            continue
        as_text = str(doc.get(name, type=pycrdt.Text))
        if as_text:
            out[name] = as_text
            continue
        out[name] = doc.get(name, type=pycrdt.Array).to_py() or []
    return out
