"""The y-websocket wire protocol as pure functions: decode one frame into a typed message, encode the
few frames the server writes. No I/O and no room state here (Hypercorn's protocol/ style).

A frame is exactly one message (y-websocket v2/v3 clients read only one per frame):
  sync       0, sub (0 step 1 | 1 step 2 | 2 update), varBytes payload
  awareness  1, varBytes(varUint n, n * (varUint client, varUint clock, varString JSON))
  auth       2, 0 (permission denied), varString reason
  query      3                                        (ask for the current awareness)
Anything that does not decode exactly is `Malformed`; unknown message types are `Unknown` (ignored).

Bounded work per byte: every count read from a frame is checked against the bytes left to hold it
before anything is allocated. yrs pre-allocates from declared counts (a 10-byte sync step 1 declaring
2^29 state-vector entries cost 1.1 s and ~1 GB before failing; an update declaring 2^28 client
sections 0.44 s and 0.5 GB), so state vectors are checked whole here and an update's leading count is
checked before it reaches yrs. Awareness states must be JSON that JavaScript's JSON.parse accepts too
(Python's json takes NaN and Infinity; relayed, they crash every stock client that joins later).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sync_server.sync.strict_json import refuse_constant

SYNC, AWARENESS, AUTH, QUERY_AWARENESS = 0, 1, 2, 3
STEP1, STEP2, UPDATE = 0, 1, 2
EMPTY_UPDATE = b"\x00\x00"  # a Yjs update that contains nothing (sent by clients with nothing new)
MAX_AWARENESS_ENTRIES = 1024
MAX_AWARENESS_STATE_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32  # nesting of an awareness state (y-websocket's cursors and users need 3-4)
MAX_SAFE_INTEGER = 2**53 - 1  # lib0's readVarUint throws past it: a relayed larger id crashes JS peers


class Malformed(ValueError):
    """The frame is not a well-formed y-websocket message; the sender gets 4400."""


@dataclass(frozen=True, slots=True)
class SyncStep1:
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    """A document update, from sync step 2 or a sync update message."""

    update: bytes
    step2: bool
    frame: bytes  # the exact bytes to relay: the received frame for updates, re-framed for step 2


@dataclass(frozen=True, slots=True)
class AwarenessUpdate:
    # (client id, clock, state) where state is the JSON text of an object, or None when removed
    entries: tuple[tuple[int, int, str | None], ...]
    frame: bytes


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    pass


@dataclass(frozen=True, slots=True)
class Unknown:
    kind: int


Message = SyncStep1 | SyncUpdate | AwarenessUpdate | QueryAwareness | Unknown


# -- primitives --------------------------------------------------------------------------------


def var_uint(num: int) -> bytes:
    if num < 0x80:
        return bytes((num,))
    out = bytearray()
    while num > 0x7F:
        out.append(0x80 | (num & 0x7F))
        num >>= 7
    out.append(num)
    return bytes(out)


_VAR_UINT = re.compile(rb"[\x80-\xff]{0,9}[\x00-\x7f]")  # at most 10 bytes (64 bits)
_LONG_VAR_UINTS: dict[bytes, int] = {}  # client ids (pycrdt's are 53-bit: 8 bytes) recur in every update


def read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); raises Malformed on truncation or an absurdly long number.
    One- and two-byte numbers inline; longer ones are delimited by a regex (C) and remembered, since
    the same client ids come in every update (a Python loop over 8 bytes cost 1.7 us a number)."""
    try:
        first = data[pos]
        if first < 0x80:
            return first, pos + 1
        second = data[pos + 1]
        if second < 0x80:
            return (first & 0x7F) | (second << 7), pos + 2
    except IndexError:
        raise Malformed("truncated or oversized varUint") from None
    match = _VAR_UINT.match(data, pos)
    if match is None or pos < 0:
        raise Malformed("truncated or oversized varUint")
    raw = match.group()
    num = _LONG_VAR_UINTS.get(raw)
    if num is None:
        num = 0
        for shift, byte in enumerate(raw):
            num |= (byte & 0x7F) << (7 * shift)
        if len(_LONG_VAR_UINTS) < 4096:
            _LONG_VAR_UINTS[raw] = num
    return num, match.end()


def _read_var_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = read_var_uint(data, pos)
    end = pos + length
    if end > len(data):
        raise Malformed("truncated payload")
    return data[pos:end], end


def check_state_vector(data: bytes) -> None:
    """A state vector is varUint n, then n (client, clock) pairs: each pair takes at least 2 bytes,
    so n is checked against the bytes left before yrs sees it. The whole buffer must be consumed."""
    count, pos = read_var_uint(data, 0)
    if count > (len(data) - pos) // 2:
        raise Malformed("state vector declares more entries than it holds")
    for _ in range(count):
        _client, pos = read_var_uint(data, pos)
        _clock, pos = read_var_uint(data, pos)
    if pos != len(data):
        raise Malformed("trailing bytes after state vector")


def check_update(update: bytes) -> None:
    """The cheap, bounded part of validating an update before yrs decodes it: its leading count of
    client sections (each at least 3 bytes: struct count, client, clock). The rest is yrs's decoder,
    which checks its own lengths against the buffer (measured with counts of 2^28 in every other
    position: < 0.2 ms, no allocation), and the room's guard around apply."""
    if not update:
        raise Malformed("empty update")
    count, pos = read_var_uint(update, 0)
    if count > (len(update) - pos) // 3:
        raise Malformed("update declares more client sections than it holds")


# -- decoding ----------------------------------------------------------------------------------


def decode(frame: bytes) -> Message:
    """Decode one frame. The whole frame must be consumed: trailing bytes are malformed too."""
    if not frame:
        raise Malformed("empty frame")
    kind = frame[0]
    if kind == SYNC:
        if len(frame) < 2:
            raise Malformed("sync message without a sub-type")
        sub = frame[1]
        payload, end = _read_var_bytes(frame, 2)
        if end != len(frame):
            raise Malformed("trailing bytes after sync payload")
        if sub == STEP1:
            check_state_vector(payload)
            return SyncStep1(payload)
        if sub == UPDATE:
            check_update(payload)
            return SyncUpdate(payload, False, frame)
        if sub == STEP2:
            check_update(payload)
            return SyncUpdate(payload, True, update_frame(payload))
        raise Malformed(f"unknown sync message type {sub}")
    if kind == AWARENESS:
        payload, end = _read_var_bytes(frame, 1)
        if end != len(frame):
            raise Malformed("trailing bytes after awareness payload")
        return AwarenessUpdate(decode_awareness(payload), frame)
    if kind == QUERY_AWARENESS:
        return QueryAwareness()
    if kind >= 0x80:
        # A message type is a varUint; every type in use fits one byte. A multi-byte one is garbage.
        raise Malformed("invalid message type")
    return Unknown(kind)  # auth (clients never send it) and extensions: ignored, as y-websocket does


def decode_awareness(payload: bytes) -> tuple[tuple[int, int, str | None], ...]:
    """Validate an awareness update: every state must be strict JSON (what JSON.parse accepts), an
    object or null, nested at most MAX_JSON_DEPTH deep; ids and clocks must fit lib0's varUint
    (malformed awareness crashes JS clients when relayed, and the server replays it to every joiner)."""
    count, pos = read_var_uint(payload, 0)
    if count > MAX_AWARENESS_ENTRIES:
        raise Malformed("too many awareness entries")
    if count > (len(payload) - pos) // 3:  # client, clock, state length: a byte each at least
        raise Malformed("awareness declares more entries than it holds")
    entries = []
    for _ in range(count):
        client, pos = read_var_uint(payload, pos)
        clock, pos = read_var_uint(payload, pos)
        if client > MAX_SAFE_INTEGER or clock > MAX_SAFE_INTEGER:
            raise Malformed("awareness client id or clock out of range")
        raw, pos = _read_var_bytes(payload, pos)
        if len(raw) > MAX_AWARENESS_STATE_BYTES:
            raise Malformed("awareness state too large")
        state = strict_json(raw) if raw else None
        if state is not None and not isinstance(state, dict):
            raise Malformed("awareness state must be an object or null")
        entries.append((client, clock, None if state is None else raw.decode("utf-8")))
    if pos != len(payload):
        raise Malformed("trailing bytes after awareness entries")
    return tuple(entries)


def strict_json(raw: bytes):
    """Parse JSON the way JavaScript's JSON.parse would accept it: UTF-8, no NaN / Infinity, and
    nested at most MAX_JSON_DEPTH deep (deeper text is refused before parsing recurses)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("awareness state is not UTF-8") from None
    if _depth(text) > MAX_JSON_DEPTH:
        raise Malformed("awareness state nested too deep")
    try:
        return json.loads(text, parse_constant=refuse_constant)
    except (ValueError, RecursionError):
        raise Malformed("awareness state is not JSON") from None


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _depth(text: str) -> int:
    """Deepest bracket nesting outside strings, at C speed: strings cut out, then a running sum
    (64 KiB of brackets: 1.3 ms, against 5 ms for a Python loop and 4.3 ms for json.loads itself)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return 0  # cannot be deeper than it has brackets
    chars = np.frombuffer(_STRING.sub("", text).encode(), dtype=np.uint8)
    steps = (chars == 0x5B).astype(np.int32) + (chars == 0x7B) - (chars == 0x5D) - (chars == 0x7D)
    return int(np.cumsum(steps).max(initial=0))


# -- encoding ----------------------------------------------------------------------------------


def step1_frame(state_vector: bytes) -> bytes:
    return bytes((SYNC, STEP1)) + var_uint(len(state_vector)) + state_vector


def step2_frame(update: bytes) -> bytes:
    return bytes((SYNC, STEP2)) + var_uint(len(update)) + update


def update_frame(update: bytes) -> bytes:
    return bytes((SYNC, UPDATE)) + var_uint(len(update)) + update


def awareness_frame(entries: Sequence[tuple[int, int, str | None]]) -> bytes:
    parts = [var_uint(len(entries))]
    for client, clock, state in entries:
        raw = b"null" if state is None else state.encode()
        parts += (var_uint(client), var_uint(clock), var_uint(len(raw)), raw)
    payload = b"".join(parts)
    return bytes((AWARENESS,)) + var_uint(len(payload)) + payload


def permission_denied_frame(reason: str) -> bytes:
    raw = reason.encode()
    return bytes((AUTH, 0)) + var_uint(len(raw)) + raw
