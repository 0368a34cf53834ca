"""Structure-aware inputs for fuzzing the sync endpoint: real Yjs updates and y-websocket frames
built with pycrdt, then mutated the ways that found crashes (a valid update followed by a copy with
1-4 bytes changed; counts and lengths replaced by boundary values; truncation; splices), plus
hostile awareness states (NaN, Infinity, deep nesting, ids past 2^53) and frame-level garbage.

Everything is drawn from one `random.Random`, so a seed replays a run exactly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pycrdt

from sync_server.sync import protocol

CORPUS_DIR = Path(__file__).resolve().parents[1] / "fuzz_corpus"
BOUNDARY = (0, 1, 2, 0x7F, 0x80, 0x3FFF, 0x4000, 2**21, 2**28, 2**29, 2**31 - 1, 2**32, 2**53, 2**63)


def var_uint(n: int) -> bytes:
    return protocol.var_uint(n)


class Source:
    """One editing client: a pycrdt doc whose edits give valid updates (deltas and whole states)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.doc = pycrdt.Doc(client_id=rng.randrange(1, 2**31))
        self.map = self.doc.get("m", type=pycrdt.Map)
        self.array = self.doc.get("a", type=pycrdt.Array)
        self.text = self.doc.get("t", type=pycrdt.Text)

    def edit(self) -> bytes:
        """A few random edits in one or more transactions; returns their delta update."""
        rng = self.rng
        before = self.doc.get_state()
        for _ in range(rng.randrange(1, 5)):
            with self.doc.transaction():
                op = rng.randrange(9)
                if op == 0:
                    self.text.insert(rng.randrange(len(self.text) + 1), "ab" * rng.randrange(1, 4))
                elif op == 1 and len(self.text) > 2:
                    del self.text[0:2]
                elif op == 2:
                    self.array.insert(0, {"x": rng.random(), "n": rng.randrange(100)})
                elif op == 3:
                    self.map["nested"] = pycrdt.Map({"q": 1, "arr": pycrdt.Array([1, 2])})
                elif op == 4:
                    self.map[f"k{rng.randrange(5)}"] = rng.choice(
                        [1, "x", [1, 2], {"a": 1}, b"\x00bin", None, True, 1.5]
                    )
                elif op == 5 and len(self.array):
                    del self.array[0]
                elif op == 6 and len(self.text):
                    self.text.format(0, len(self.text), {"bold": True})
                elif op == 7:
                    self.array.append("s" * rng.randrange(1, 20))
                else:
                    self.map[f"t{rng.randrange(3)}"] = pycrdt.Text("hello")
        return self.doc.get_update(before)

    def state(self) -> bytes:
        return self.doc.get_update()


def mutate(rng: random.Random, data: bytes) -> bytes:
    """1-4 mutations: byte replaced / inserted / deleted, a varUint planted at a random offset,
    truncation, or a slice duplicated."""
    out = bytearray(data or b"\x00")
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(10)
        pos = rng.randrange(len(out)) if out else 0
        if kind <= 3 or len(out) < 3:
            if out:
                out[pos] = rng.randrange(256)
            else:
                out.append(rng.randrange(256))
        elif kind == 4:
            out.insert(pos, rng.randrange(256))
        elif kind == 5:
            del out[pos]
        elif kind == 6:
            out[pos : pos + 1] = var_uint(rng.choice(BOUNDARY))
        elif kind == 7:
            del out[rng.randrange(1, len(out)) :]
        elif kind == 8:
            end = min(len(out), pos + rng.randrange(1, 16))
            out[end:end] = out[pos:end]
        else:
            out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


def awareness_state(rng: random.Random) -> bytes:
    """A JSON-ish awareness state, often hostile."""
    kind = rng.randrange(8)
    if kind == 0:
        return b'{"user":{"name":"x","color":"#fff"},"cursor":NaN}'
    if kind == 1:
        return b'{"v":Infinity}' if rng.random() < 0.5 else b'{"v":-Infinity}'
    if kind == 2:
        depth = rng.choice((20, 33, 200, 5000))
        return b'{"d":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 3:
        return b"[1,2,3]"
    if kind == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    if kind == 5:
        return b'{"s":"\xff\xfe"}'
    if kind == 6:
        return b""
    return json.dumps({"user": {"name": "fuzz", "n": rng.randrange(1000)}}).encode()


def awareness_frame(rng: random.Random) -> bytes:
    entries = []
    for _ in range(rng.randrange(1, 4)):
        client = rng.choice((rng.randrange(1, 2**31), 2**53, 2**60))
        clock = rng.choice((rng.randrange(0, 100), 2**53 + 1))
        state = awareness_state(rng)
        entries.append(var_uint(client) + var_uint(clock) + var_uint(len(state)) + state)
    count = len(entries) if rng.random() < 0.9 else rng.choice(BOUNDARY)
    payload = var_uint(count) + b"".join(entries)
    return bytes((protocol.AWARENESS,)) + var_uint(len(payload)) + payload


class FrameMaker:
    """Frames for one room: mostly sync updates (valid/mutated pairs), some step 1 / step 2,
    awareness, and raw garbage."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sources = [Source(rng) for _ in range(3)]

    def frames(self) -> list[bytes]:
        """A short sequence to send in order on one connection."""
        rng = self.rng
        kind = rng.randrange(12)
        src = rng.choice(self.sources)
        if kind <= 5:  # the recipe that found the yrs panics: a valid update, then a mutated copy
            update = src.edit() if rng.random() < 0.7 else src.state()
            sub = protocol.UPDATE if rng.random() < 0.7 else protocol.STEP2
            bad = mutate(rng, update)
            frame = bytes((protocol.SYNC, sub)) + var_uint(len(bad)) + bad
            return [protocol.update_frame(update), frame, protocol.step1_frame(b"\x00")]
        if kind == 6:  # a mutated state vector, or a declared-huge one
            sv = src.doc.get_state()
            if rng.random() < 0.5:
                sv = var_uint(rng.choice(BOUNDARY)) + sv[1:]
            return [protocol.step1_frame(mutate(rng, sv))]
        if kind == 7:
            return [awareness_frame(rng)]
        if kind == 8:  # the whole frame mutated (lengths, sub-types, trailing bytes)
            return [mutate(rng, protocol.update_frame(src.edit()))]
        if kind == 9:  # an empty update followed by junk: must not be stored
            return [protocol.update_frame(b"\x00\x00" + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))]
        if kind == 10:
            return [bytes((rng.randrange(256),)) + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12)))]
        return [bytes((protocol.QUERY_AWARENESS,)), protocol.update_frame(src.edit())]


# -- the corpus: inputs that once broke something, replayed first on every run --------------------


def load_corpus() -> list[list[bytes]]:
    """Each corpus file is one case: hex frames, one per line, sent in order into a fresh room."""
    return [frames for path in sorted(CORPUS_DIR.glob("*.hex")) if (frames := load_case(path))]


def save_case(frames: list[bytes], name: str) -> Path:
    CORPUS_DIR.mkdir(exist_ok=True)
    text = "\n".join(f.hex() for f in frames) + "\n"
    for path in CORPUS_DIR.glob("*.hex"):
        if path.read_text() == text:
            return path
    path = CORPUS_DIR / f"{name}.hex"
    path.write_text(text)
    return path


def load_case(path: Path) -> list[bytes]:
    return [bytes.fromhex(line) for line in path.read_text().split() if line]


# -- RFC 6455 framing: what a raw socket can send a websocket server -------------------------------

CLOSE_CODES = (0, 999, 1000, 1001, 1002, 1004, 1005, 1006, 1011, 1015, 1016, 2999, 3000, 4000, 4400, 4999, 5000, 65535)


class WireFrames:
    """Byte streams for one raw websocket connection: frames whose header bits, opcodes, length
    encodings (non-minimal, lying, past 2^63), masks and fragmentation are drawn at random around
    payloads from a `FrameMaker`; then split into TCP writes at random points."""

    def __init__(self, rng: random.Random, maker: FrameMaker) -> None:
        self.rng = rng
        self.maker = maker
        self.lied_long = False  # the stream declares more payload than it sends
        self.close_codes: set[int] = set()  # the codes of the close frames the stream holds (echoed back)

    def header(self, opcode: int, n: int, fin: bool = True, rsv: int = 0, masked: bool = True) -> bytes:
        rng = self.rng
        b0 = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode & 0x0F
        flag = 0x80 if masked else 0
        style = rng.random()
        if n < 126 and style > 0.1:
            length = bytes((flag | n,))
        elif n < 65536 and style > 0.05:
            length = bytes((flag | 126,)) + n.to_bytes(2, "big")
        else:
            length = bytes((flag | 127,)) + (n % 2**64).to_bytes(8, "big")
        return bytes((b0,)) + length

    def frame(self, opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, masked: bool = True, n=None) -> bytes:
        declared = len(payload) if n is None else n
        head = self.header(opcode, declared, fin, rsv, masked)
        if not masked:
            return head + payload
        mask = bytes(self.rng.randrange(256) for _ in range(4))
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def message(self) -> bytes:
        """One sync message as 1-4 fragments, control frames sometimes between them."""
        rng = self.rng
        payload = b"".join(self.maker.frames()[:1])
        cuts = sorted(rng.randrange(len(payload) + 1) for _ in range(rng.randrange(4)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        out = b""
        for i, piece in enumerate(pieces):
            out += self.frame(2 if i == 0 else 0, piece, fin=i == len(pieces) - 1)
            if rng.random() < 0.2:
                out += self.frame(rng.choice((9, 10)), bytes(rng.randrange(256) for _ in range(rng.randrange(126))))
        return out

    def hostile(self) -> bytes:
        """One frame that breaks a rule of RFC 6455, or a legal one at its edges."""
        rng = self.rng
        kind = rng.randrange(14)
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        if kind == 0:  # reserved opcodes
            return self.frame(rng.choice((3, 4, 5, 6, 7, 11, 12, 13, 14, 15)), junk[:100])
        if kind == 1:  # RSV bits without an extension
            return self.frame(2, self.maker.frames()[0], rsv=rng.randrange(1, 8))
        if kind == 2:  # unmasked client frame
            return self.frame(2, junk, masked=False)
        if kind == 3:  # control frame too long or fragmented
            return self.frame(rng.choice((8, 9, 10)), junk + bytes(126), fin=rng.random() < 0.5)
        if kind == 4:  # continuation with no message
            return self.frame(0, junk)
        if kind == 5:  # a new message inside a fragmented one
            return self.frame(2, junk, fin=False) + self.frame(2, junk)
        if kind == 6:  # close frames: odd codes, a 1-byte payload, invalid UTF-8 reasons
            number = rng.choice(CLOSE_CODES)
            self.close_codes.add(number)
            code = number.to_bytes(2, "big")
            reason = rng.choice((b"", b"bye", b"\xff\xfe", b"\xc3", "é".encode() * 40))
            return self.frame(8, rng.choice((b"", code[:1], code + reason[:123])))
        if kind == 7:  # text frames, valid and not UTF-8
            return self.frame(1, rng.choice((b"hello", b"\xff\xfe\xfd", b"\xed\xa0\x80", junk)))
        if kind == 8:  # a length past 2^63, or huge, with a little payload after it
            self.lied_long = True
            return self.frame(2, junk[:20], n=rng.choice((2**63, 2**64 - 1, 2**40, 2**31)))
        if kind == 9:  # declared shorter than sent: the rest is read as the next header
            return self.frame(2, junk, n=max(0, len(junk) - rng.randrange(1, 8)))
        if kind == 10:  # declared somewhat longer than sent: the server waits for it
            self.lied_long = True
            return self.frame(2, junk, n=len(junk) + rng.randrange(1, 5000))
        if kind == 11:  # pings, many, some empty
            return b"".join(self.frame(9, junk[: rng.randrange(126)]) for _ in range(rng.randrange(1, 50)))
        if kind == 12:  # a frame header cut short, then a fresh frame
            return self.frame(2, junk)[: rng.randrange(1, 6)] + self.message()
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))  # bytes, no frame at all

    def stream(self) -> bytes:
        self.lied_long = False
        self.close_codes = set()
        rng = self.rng
        parts = []
        for _ in range(rng.randrange(1, 6)):
            parts.append(self.hostile() if rng.random() < 0.4 else self.message())
        return b"".join(parts)

    def writes(self, data: bytes) -> list[bytes]:
        """`data` in TCP writes of random size (single bytes now and then)."""
        rng = self.rng
        out, pos = [], 0
        while pos < len(data):
            step = 1 if rng.random() < 0.1 else rng.randrange(1, 4096)
            out.append(data[pos : pos + step])
            pos += step
        return out
