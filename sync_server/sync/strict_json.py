"""JSON as JavaScript reads it: the one rule for every JSON text the server passes on to clients.

Python's `json` writes and accepts NaN, Infinity and -Infinity; JavaScript's `JSON.parse` rejects
them, so one such number relayed or answered breaks every JS client that reads it. What the server
writes (`dumps`, and Quart's `jsonify` through api.json_provider) never contains them: a non-finite
number is written as null (as pydantic writes the @operation responses, and as JavaScript's own
JSON.stringify does). Awareness states, relayed to every peer byte for byte, are checked when
read (sync_server.sync.protocol.strict_json); a request body holding them is refused (api.json_provider).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any


def refuse_constant(constant: str) -> Any:
    """json.loads(parse_constant=...): NaN, Infinity and -Infinity are not JSON."""
    raise ValueError(f"{constant} is not JSON")


def dumps(obj: Any, *, default: Callable[[Any], Any] | None = None, **kwargs: Any) -> str:
    """json.dumps whose output JSON.parse reads: non-finite numbers become null. Costs nothing
    extra when there is none (the first attempt is the plain encoder with allow_nan=False)."""
    try:
        return json.dumps(obj, default=default, allow_nan=False, **kwargs)
    except ValueError:  # a non-finite number somewhere (or a circular reference: raised again below)
        return json.dumps(_finite(obj, default, 0), default=default, allow_nan=False, **kwargs)


def _finite(value: Any, default: Callable[[Any], Any] | None, depth: int) -> Any:
    if depth > 1000:
        raise ValueError("nested too deeply to write as JSON")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {key: _finite(item, default, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item, default, depth + 1) for item in value]
    if default is not None:  # e.g. a dataclass the default turns into a dict holding a NaN
        return _finite(default(value), default, depth + 1)
    return value
