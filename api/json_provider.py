"""Quart's JSON (jsonify, request.get_json) under sync_server.sync.strict_json's rule: what the Quart
routes answer never holds NaN or Infinity, and a request body holding them is not JSON."""

from __future__ import annotations

import json
from typing import Any

from quart.json.provider import DefaultJSONProvider

from sync_server.sync import strict_json


class JSONProvider(DefaultJSONProvider):
    """Non-finite numbers are written as null, and refused when read (get_json(silent=True) answers
    None, as for any unreadable body)."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("ensure_ascii", self.ensure_ascii)
        kwargs.setdefault("sort_keys", self.sort_keys)
        return strict_json.dumps(obj, default=kwargs.pop("default", self.default), **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        kwargs.setdefault("parse_constant", strict_json.refuse_constant)
        return json.loads(s, **kwargs)
