"""Reading the Yjs update format (v1) far enough to refuse what yrs would integrate wrongly.

yrs 0.28 integrates an item whose clock lies beyond what the document has of its client (a gap):
it fills the gap with a Skip block, the state vector stays where it was, the item's content shows
in the document but is never encoded for anyone, and a later update that fills the gap is where
yrs panics (`Option::unwrap()` on None in the block store). Yjs keeps such structs pending instead.
No client produces a gap (a client's own structs are contiguous, a diff starts at the receiver's
state vector), so an update with one is refused before it reaches yrs.

`summarize` walks the struct sections (client, first clock, and the clock after the section); to
reach the next section it has to skip every struct of this one, contents included, so the walk
costs a pass over the bytes of every section but the last (an offline phone's upload is one
section: its header is all that is read). Every count is checked against
the bytes left before it is used (bounded work per byte). The format: yjs/src/utils/UpdateDecoder.js
(UpdateDecoderV1) and lib0's decoding.readAny.
"""

from __future__ import annotations

from dataclasses import dataclass

from sync_server.sync.protocol import Malformed, read_var_uint, var_uint

MAX_ANY_DEPTH = 64

# Content refs (info & 0x1F)
GC, DELETED, JSON, BINARY, STRING, EMBED, FORMAT, TYPE, ANY, DOC, SKIP = range(11)
XML_ELEMENT, XML_HOOK = 3, 5  # type refs that carry a name


def _skip_bytes(data: bytes, pos: int) -> int:
    length, pos = read_var_uint(data, pos)
    end = pos + length
    if end > len(data):
        raise Malformed("truncated string or bytes")
    return end


def _utf16_length(data: bytes, pos: int) -> tuple[int, int]:
    length, pos = read_var_uint(data, pos)
    end = pos + length
    if end > len(data):
        raise Malformed("truncated string")
    try:
        text = data[pos:end].decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("string is not UTF-8") from None
    return len(text.encode("utf-16-le")) // 2, end


def _skip_any(data: bytes, pos: int, depth: int = 0) -> int:
    if depth > MAX_ANY_DEPTH:
        raise Malformed("value nested too deep")
    if pos >= len(data):
        raise Malformed("truncated value")
    kind = data[pos]
    pos += 1
    if kind in (127, 126, 121, 120):  # undefined, null, false, true
        return pos
    if kind == 125:  # varInt
        while True:
            if pos >= len(data):
                raise Malformed("truncated integer")
            pos += 1
            if data[pos - 1] < 0x80:
                return pos
    if kind == 124:
        pos += 4
    elif kind in (123, 122):
        pos += 8
    elif kind in (119, 116):  # string, Uint8Array
        return _skip_bytes(data, pos)
    elif kind in (118, 117):  # object, array
        count, pos = read_var_uint(data, pos)
        if count > len(data) - pos:
            raise Malformed("value declares more entries than it holds")
        for _ in range(count):
            if kind == 118:
                pos = _skip_bytes(data, pos)
            pos = _skip_any(data, pos, depth + 1)
        return pos
    else:
        raise Malformed("unknown value type")
    if pos > len(data):
        raise Malformed("truncated value")
    return pos


def _skip_struct(data: bytes, pos: int) -> tuple[int, int]:
    """(length in clock units, next position) of the struct at `pos`."""
    if pos >= len(data):
        raise Malformed("truncated struct")
    info = data[pos]
    pos += 1
    ref = info & 0x1F
    if ref in (GC, SKIP):
        return read_var_uint(data, pos)
    if info & 0x80:  # origin
        _, pos = read_var_uint(data, pos)
        _, pos = read_var_uint(data, pos)
    if info & 0x40:  # right origin
        _, pos = read_var_uint(data, pos)
        _, pos = read_var_uint(data, pos)
    if not info & 0xC0:
        parent_is_key, pos = read_var_uint(data, pos)
        if parent_is_key == 1:
            pos = _skip_bytes(data, pos)
        else:
            _, pos = read_var_uint(data, pos)
            _, pos = read_var_uint(data, pos)
        if info & 0x20:
            pos = _skip_bytes(data, pos)
    if ref == DELETED:
        length, pos = read_var_uint(data, pos)
        return length, pos
    if ref in (JSON, ANY):
        count, pos = read_var_uint(data, pos)
        if count > len(data) - pos:
            raise Malformed("content declares more values than it holds")
        for _ in range(count):
            pos = _skip_bytes(data, pos) if ref == JSON else _skip_any(data, pos)
        return count, pos
    if ref == STRING:
        return _utf16_length(data, pos)
    if ref in (BINARY, EMBED):
        return 1, _skip_bytes(data, pos)
    if ref == FORMAT:
        return 1, _skip_bytes(data, _skip_bytes(data, pos))
    if ref == TYPE:
        type_ref, pos = read_var_uint(data, pos)
        if type_ref in (XML_ELEMENT, XML_HOOK):
            pos = _skip_bytes(data, pos)
        return 1, pos
    if ref == DOC:
        return 1, _skip_any(data, _skip_bytes(data, pos))
    raise Malformed("unknown content type")


@dataclass(frozen=True, slots=True)
class Summary:
    """What an update holds, per client section: (client, first clock, clock after it or None when
    the section was not walked), and its delete set's client count (None when not reached)."""

    sections: list[tuple[int, int, int | None]]
    deleting: int | None


def summarize(update: bytes, *, walk_all: bool) -> Summary:
    """The struct sections of `update`. Every section but the last is walked (the next header lies
    behind it). With `walk_all` the last one and the delete set are read too and the update must end
    exactly there (yrs ignores trailing bytes; they are refused here so junk is never stored)."""
    count, pos = read_var_uint(update, 0)
    if count > (len(update) - pos) // 3:
        raise Malformed("update declares more client sections than it holds")
    found: list[tuple[int, int, int | None]] = []
    for i in range(count):
        structs, pos = read_var_uint(update, pos)
        if structs > len(update) - pos:
            raise Malformed("section declares more structs than it holds")
        client, pos = read_var_uint(update, pos)
        clock, pos = read_var_uint(update, pos)
        if i == count - 1 and not walk_all:
            found.append((client, clock, None))
            return Summary(found, None)
        end = clock
        for _ in range(structs):
            length, pos = _skip_struct(update, pos)
            end += length
        found.append((client, clock, end))
    if not walk_all:
        return Summary(found, None)
    clients, pos = _read_delete_set(update, pos, None)
    if pos != len(update):
        raise Malformed("trailing bytes after the update")
    return Summary(found, clients)


def _read_delete_set(update: bytes, pos: int, into: dict[int, list[tuple[int, int]]] | None) -> tuple[int, int]:
    """(client count, position after) of the delete set at `pos`; its ranges go to `into` if given."""
    clients, pos = read_var_uint(update, pos)
    if clients > (len(update) - pos) // 2:
        raise Malformed("delete set declares more clients than it holds")
    for _ in range(clients):
        client, pos = read_var_uint(update, pos)
        ranges, pos = read_var_uint(update, pos)
        if ranges > (len(update) - pos) // 2:
            raise Malformed("delete set declares more ranges than it holds")
        out = into.setdefault(client, []) if into is not None else None
        for _ in range(ranges):
            clock, pos = read_var_uint(update, pos)
            length, pos = read_var_uint(update, pos)
            if out is not None and length:
                out.append((clock, clock + length))
    return clients, pos


def deletes_covered(update: bytes, known: bytes) -> bool:
    """Whether every range `update` deletes is deleted in `known` already: `known` is an update
    without structs (a doc's `get_update(get_state())`: its whole delete set). `update` must have
    been summarized with walk_all (its sections are skipped here without checks)."""
    count, pos = read_var_uint(update, 0)
    for _ in range(count):
        structs, pos = read_var_uint(update, pos)
        _, pos = read_var_uint(update, pos)
        _, pos = read_var_uint(update, pos)
        for _ in range(structs):
            _, pos = _skip_struct(update, pos)
    wanted: dict[int, list[tuple[int, int]]] = {}
    _read_delete_set(update, pos, wanted)
    count, pos = read_var_uint(known, 0)
    if count:
        return False  # not a delete set alone
    have: dict[int, list[tuple[int, int]]] = {}
    _read_delete_set(known, pos, have)
    for client, ranges in wanted.items():
        merged = _merged(have.get(client, []))
        for start, end in ranges:
            if not any(a <= start and end <= b for a, b in merged):
                return False
    return True


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def state(state_vector: bytes) -> dict[int, int]:
    """A state vector (already checked by protocol.check_state_vector) as client -> clock."""
    count, pos = read_var_uint(state_vector, 0)
    out = {}
    for _ in range(count):
        client, pos = read_var_uint(state_vector, pos)
        out[client], pos = read_var_uint(state_vector, pos)
    return out


def covering(a: bytes, b: bytes) -> bytes:
    """The state vector of a peer that holds both states (already checked): per client the higher
    clock. A clock says the peer has every struct of that client below it, so the union of two
    states is the higher of each."""
    clocks = state(a)
    for client, clock in state(b).items():
        if clock > clocks.get(client, 0):
            clocks[client] = clock
    return var_uint(len(clocks)) + b"".join(var_uint(c) + var_uint(k) for c, k in clocks.items())
