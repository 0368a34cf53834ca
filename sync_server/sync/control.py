"""WebHost's own y-websocket message: one top-level message type beside y-protocols' four
(0 sync, 1 awareness, 2 auth, 3 query awareness), for what stock y-websocket has no message for.

    frame = varUint 87 ("W"), varUint version (1), varUint kind, payload

    kind 0  REFRESH          client -> server  varString token     a new sync token for this socket
    kind 1  REFRESHED        server -> client  varUint expires_at  accepted (epoch seconds)
    kind 2  REFRESH_REFUSED  server -> client  varString reason    refused; the socket keeps its old token
    kind 3  DURABLE          server -> client  varUint count       the first `count` update messages
                                                                   this socket sent are committed
                                                                   (only with ?ack=1, see README)

Stock clients never send type 87 and are never sent one unless they opted in (`?ack=1` for DURABLE;
REFRESHED / REFRESH_REFUSED only answer a REFRESH). A frame of type 87 with another version or an
unknown kind is ignored, so later versions can add kinds; a known kind that does not decode exactly is
malformed (4400). Decoding is bounded: a token is at most MAX_TOKEN_BYTES.
"""

from __future__ import annotations

from dataclasses import dataclass

from sync_server.sync import protocol

WEBHOST = 87
VERSION = 1
REFRESH, REFRESHED, REFRESH_REFUSED, DURABLE = 0, 1, 2, 3
MAX_TOKEN_BYTES = 4096
MAX_REASON_BYTES = 120


@dataclass(frozen=True, slots=True)
class Refresh:
    token: str


def is_control(frame: bytes) -> bool:
    return bool(frame) and frame[0] == WEBHOST


def decode(frame: bytes) -> Refresh | None:
    """The client message in a type-87 frame, or None when it is one this server does not know
    (another version or kind: ignored). Raises protocol.Malformed for a known kind that is broken."""
    version, pos = protocol.read_var_uint(frame, 1)
    if version != VERSION:
        return None
    kind, pos = protocol.read_var_uint(frame, pos)
    if kind != REFRESH:
        return None
    length, pos = protocol.read_var_uint(frame, pos)
    if length > MAX_TOKEN_BYTES:
        raise protocol.Malformed("token too long")
    if pos + length != len(frame):
        raise protocol.Malformed("refresh message length does not match")
    try:
        return Refresh(frame[pos:].decode("ascii"))
    except UnicodeDecodeError:
        raise protocol.Malformed("token is not ASCII") from None


def _frame(kind: int, payload: bytes) -> bytes:
    return bytes((WEBHOST, VERSION, kind)) + payload


def refresh_frame(token: str) -> bytes:
    """What a client sends (used by tests and the Python client example)."""
    raw = token.encode("ascii")
    return _frame(REFRESH, protocol.var_uint(len(raw)) + raw)


def refreshed_frame(expires_at: int) -> bytes:
    return _frame(REFRESHED, protocol.var_uint(max(0, int(expires_at))))


def refused_frame(reason: str) -> bytes:
    raw = reason.encode()[:MAX_REASON_BYTES]
    return _frame(REFRESH_REFUSED, protocol.var_uint(len(raw)) + raw)


def durable_frame(count: int) -> bytes:
    return _frame(DURABLE, protocol.var_uint(count))


def read_server_frame(frame: bytes) -> tuple[int, int | str]:
    """(kind, value) of a server frame: expires_at, reason or count (for clients and tests)."""
    version, pos = protocol.read_var_uint(frame, 1)
    kind, pos = protocol.read_var_uint(frame, pos)
    if version != VERSION:
        raise protocol.Malformed("unknown version")
    if kind == REFRESH_REFUSED:
        length, pos = protocol.read_var_uint(frame, pos)
        return kind, frame[pos : pos + length].decode()
    value, _ = protocol.read_var_uint(frame, pos)
    return kind, value
