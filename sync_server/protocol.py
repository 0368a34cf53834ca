"""The y-websocket wire protocol as pure functions: decode one frame into a typed message, encode the
few frames the server writes. No I/O and no room state here (Hypercorn's protocol/ style).

A frame is exactly one message (y-websocket v2/v3 clients read only one per frame):
  sync       0, sub (0 step 1 | 1 step 2 | 2 update), varBytes payload
  awareness  1, varBytes(varUint n, n * (varUint client, varUint clock, varString JSON))
  auth       2, 0 (permission denied), varString reason
  query      3                                        (ask for the current awareness)
Anything that does not decode exactly is `Malformed`; unknown message types are `Unknown` (ignored).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import strict_json

SYNC, AWARENESS, AUTH, QUERY_AWARENESS = 0, 1, 2, 3
STEP1, STEP2, UPDATE = 0, 1, 2
EMPTY_UPDATE = b"\x00\x00"  # a Yjs update that contains nothing (sent by clients with nothing new)
MAX_AWARENESS_ENTRIES = 1024
MAX_AWARENESS_STATE_BYTES = 64 * 1024


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


def read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); raises Malformed on truncation or an absurdly long number."""
    num = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end or shift > 63:
            raise Malformed("truncated or oversized varUint")
        byte = data[pos]
        pos += 1
        num |= (byte & 0x7F) << shift
        if byte < 0x80:
            return num, pos
        shift += 7


def _read_var_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = read_var_uint(data, pos)
    end = pos + length
    if end > len(data):
        raise Malformed("truncated payload")
    return data[pos:end], end


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
            return SyncStep1(payload)
        if sub == UPDATE:
            return SyncUpdate(payload, False, frame)
        if sub == STEP2:
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
    """Validate an awareness update: every state must be a JSON object or null, or it is dropped
    (malformed awareness crashes JS clients when relayed)."""
    count, pos = read_var_uint(payload, 0)
    if count > MAX_AWARENESS_ENTRIES:
        raise Malformed("too many awareness entries")
    entries = []
    for _ in range(count):
        client, pos = read_var_uint(payload, pos)
        clock, pos = read_var_uint(payload, pos)
        raw, pos = _read_var_bytes(payload, pos)
        if len(raw) > MAX_AWARENESS_STATE_BYTES:
            raise Malformed("awareness state too large")
        try:
            text = raw.decode("utf-8")
            state = strict_json.loads(text) if text else None  # relayed as is: JSON.parse must read it
        except (UnicodeDecodeError, ValueError):
            raise Malformed("awareness state is not JSON") from None
        if state is not None and not isinstance(state, dict):
            raise Malformed("awareness state must be an object or null")
        entries.append((client, clock, None if state is None else text))
    if pos != len(payload):
        raise Malformed("trailing bytes after awareness entries")
    return tuple(entries)


# -- encoding ----------------------------------------------------------------------------------

def step1_frame(state_vector: bytes) -> bytes:
    return bytes((SYNC, STEP1)) + var_uint(len(state_vector)) + state_vector


def step2_frame(update: bytes) -> bytes:
    return bytes((SYNC, STEP2)) + var_uint(len(update)) + update


def update_frame(update: bytes) -> bytes:
    return bytes((SYNC, UPDATE)) + var_uint(len(update)) + update


def awareness_frame(entries: list[tuple[int, int, str | None]] | tuple) -> bytes:
    parts = [var_uint(len(entries))]
    for client, clock, state in entries:
        raw = b"null" if state is None else state.encode()
        parts += (var_uint(client), var_uint(clock), var_uint(len(raw)), raw)
    payload = b"".join(parts)
    return bytes((AWARENESS,)) + var_uint(len(payload)) + payload


def permission_denied_frame(reason: str) -> bytes:
    raw = reason.encode()
    return bytes((AUTH, 0)) + var_uint(len(raw)) + raw
