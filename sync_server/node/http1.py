"""Plain HTTP/1.1 requests (REST, the web app, health) served by uvicorn's httptools protocol from
the node's front door (issue 20), with the limits Hypercorn enforced.

Hypercorn parses each request with h11 in Python and runs it through several tasks, events and
awaits; uvicorn's `HttpToolsProtocol` parses with llhttp (C) in the socket's own protocol callbacks
and runs one task per request. Measured on the same app (bench/RESULTS_REST.md, rounds 3 and 5):
~0.7x of the server CPU per REST list. The app stack is the same one Hypercorn calls (Quart ->
RestEndpoint -> SyncEndpoint); lifespan, TLS, HTTP/2 and every websocket stay Hypercorn's.

Which connection goes where (`Http1.takes`, called by the front door's hand-on, after the sync
endpoint declined the first bytes):

- a complete head of at most `h11_max_incomplete_size` bytes with no `Upgrade` header and not
  HTTP/2's preface: this module's `Protocol` (a `HttpToolsProtocol`), fed the bytes already read;
- an `Upgrade` (websockets to other paths, h2c), HTTP/2 prior knowledge, or a head past the limit:
  Hypercorn, exactly as before (so it answers 431 and every odd head as it always did);
- a head not complete yet: a `Sorting` protocol keeps reading (bounded by the same limit and by
  `keep_alive_timeout`, as Hypercorn's idle timer bounds a head that trickles in) until it knows.

What `Protocol` changes in uvicorn's, each to what Hypercorn did (tests/test_http1.py):

- a request head still incomplete after a read with more than `h11_max_incomplete_size` bytes of
  it, or longer than Hypercorn's 64 KiB read, is answered 431 (h11's limit is on the incomplete
  buffer: a 20 KiB head in one read passes there, and here); malformed input 400, an HTTP/1.1
  request without Host 400 (h11's rule); each with an empty body and `connection: close`;
- the keep-alive timer is not reset by bytes arriving, only by a complete head: a client trickling a
  head is closed `keep_alive_timeout` after the connection went idle (uvicorn kept it for ever);
- `keep_alive_max_requests` per connection (the last answer says `connection: close`);
- a response finished while its request's body is still arriving closes the connection (uvicorn
  would read and drop the rest of, say, a huge body it answered 413);
- a later request on a keep-alive connection that asks for an upgrade goes to Hypercorn;
- the Date and Server headers are Hypercorn's (`config.response_headers`), the date computed once a
  second; uvicorn's access log and proxy-header rewriting are off.

Shutdown: `Http1.close` (the front door's listener close, which Hypercorn calls after setting its
`terminated`) closes idle connections and marks busy ones to close after their response; the
listener's `wait_closed` waits for them up to `graceful_timeout`, then aborts what is left and
cancels its request tasks, before Hypercorn runs the app's shutdown.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

HandOn = Callable[[asyncio.Transport, bytes], None]  # the front door's hand-on to Hypercorn

MAX_RECV = 2**16  # what Hypercorn reads at once: a longer head is never complete after one read
_HYPERCORNS = re.compile(rb"\r\nupgrade[ \t]*:", re.IGNORECASE)  # websockets, h2c: Hypercorn's


class Limits:
    """What Hypercorn's config enforced on an HTTP/1.1 connection."""

    __slots__ = ("keep_alive_timeout", "max_head", "max_requests", "graceful_timeout", "headers")

    def __init__(self, config: Any) -> None:
        self.keep_alive_timeout: float = config.keep_alive_timeout
        self.max_head: int = config.h11_max_incomplete_size
        self.max_requests: int = config.keep_alive_max_requests
        self.graceful_timeout: float = config.graceful_timeout
        # Server (and alt-svc, when configured) as Hypercorn sends them; Date is made per second here
        self.headers: list[tuple[bytes, bytes]] = [h for h in config.response_headers("h11") if h[0] != b"date"]


class _State(ServerState):
    """uvicorn's shared state; `default_headers` (read at every response start) carries Hypercorn's
    Server header and a Date made again only when the second changes."""

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._fixed = headers
        self._second = -1
        self._headers: list[tuple[bytes, bytes]] = []
        super().__init__()

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._headers = [(b"date", formatdate(now, usegmt=True).encode("ascii")), *self._fixed]
        return self._headers

    @default_headers.setter
    def default_headers(self, value: list[tuple[bytes, bytes]]) -> None:
        pass  # ServerState.__init__ assigns []; the headers are made above


def refusal(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """What Hypercorn writes for input h11 cannot take: the status, an empty body, connection: close."""
    content = [STATUS_LINE[status], b"content-length: 0\r\nconnection: close\r\n"]
    for name, value in headers:
        content += [name, b": ", value, b"\r\n"]
    content.append(b"\r\n")
    return b"".join(content)


class HeadTooLarge(Exception):
    """A request head longer than Hypercorn's read (answered 431)."""


class MissingHost(Exception):
    """An HTTP/1.1 request without Host (h11 answers 400)."""


class Http1:
    """The node's plain HTTP/1.1 service: made once by the CLI, called by the front door."""

    def __init__(self, app: Any, config: Any) -> None:
        self.limits = Limits(config)
        self.config = UvicornConfig(
            app,
            http="httptools",
            ws="none",
            lifespan="off",
            interface="asgi3",
            proxy_headers=False,
            access_log=False,
            server_header=False,
            date_header=False,
            log_config=None,
            timeout_keep_alive=int(self.limits.keep_alive_timeout) or 1,
        )
        self.config.load()
        self.state = _State(self.limits.headers)
        self.sorting: set[Sorting] = set()
        self.closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def takes(self, transport: asyncio.Transport, data: bytes, hand_on: HandOn) -> bool:
        """Serve the connection whose first bytes are `data` (True), or leave it to Hypercorn."""
        if self.closing:
            return False
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > self.limits.max_head:
                return False
            sorting = Sorting(self, transport, data, hand_on)
            transport.set_protocol(sorting)
            return True
        if end + 4 > self.limits.max_head or data.startswith(b"PRI ") or _HYPERCORNS.search(data, 0, end + 2):
            return False
        self.serve(transport, data, hand_on)
        return True

    def serve(self, transport: asyncio.Transport, data: bytes, hand_on: HandOn) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        protocol = Protocol(self, hand_on)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(data)

    def close(self) -> None:
        """Shutdown began: idle connections close now, busy ones after their response."""
        self.closing = True
        for sorting in list(self.sorting):
            sorting.transport.close()
        for connection in list(self.state.connections):
            connection.shutdown()

    async def wait_closed(self) -> None:
        """Until every connection is closed, at most graceful_timeout; then the rest are cut."""
        deadline = time.monotonic() + self.limits.graceful_timeout
        while (self.state.connections or self.state.tasks or self.sorting) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.state.connections):
            connection.transport.abort()
        for task in list(self.state.tasks):
            task.cancel()
        if self.state.tasks:
            await asyncio.wait(list(self.state.tasks), timeout=1.0)


class Sorting(asyncio.Protocol):
    """A connection whose first head is not complete yet: read on until it is, then hand it to
    `Protocol` or Hypercorn; closed after keep_alive_timeout without a complete head."""

    def __init__(self, http1: Http1, transport: asyncio.Transport, data: bytes, hand_on: HandOn) -> None:
        self.http1, self.transport, self.hand_on = http1, transport, hand_on
        self.buffer = bytearray(data)
        http1.sorting.add(self)
        self.timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            http1.limits.keep_alive_timeout, transport.close
        )

    def data_received(self, data: bytes) -> None:
        start = max(0, len(self.buffer) - 3)  # only the new bytes can complete the head
        self.buffer += data
        if self.buffer.find(b"\r\n\r\n", start) < 0 and len(self.buffer) <= self.http1.limits.max_head:
            return
        head = bytes(self.buffer)
        self._done()
        if not self.http1.takes(self.transport, head, self.hand_on):
            self.hand_on(self.transport, head)

    def eof_received(self) -> bool:
        """The client stopped sending mid-head: 400, as Hypercorn (h11) answers that."""
        self._done()
        self.transport.write(refusal(400, self.http1.state.default_headers))
        return False  # then closed

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def _done(self) -> None:
        self.http1.sorting.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with Hypercorn's limits (the module's docstring lists them)."""

    def __init__(self, http1: Http1, hand_on: HandOn) -> None:
        super().__init__(http1.config, http1.state, {}, _loop=http1._loop)
        self.limits = http1.limits
        self.hand_on = hand_on
        self.requests = 0
        self.heading = False  # between a message's first byte and its complete head
        self.head_seen = 0  # bytes of the head reported by the parser's callbacks
        self.head_read = 0  # bytes of chunks that arrived while the head was incomplete throughout
        self.host = False
        self.timeout_keep_alive = self.limits.keep_alive_timeout  # type: ignore[assignment]  # float: uvicorn's config takes whole seconds

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.writer = Writer(transport)
        # the first head must be complete within keep_alive_timeout, as under Hypercorn's idle timer
        self.timeout_keep_alive_task = self.loop.call_later(self.limits.keep_alive_timeout, self._idle_too_long)

    def eof_received(self) -> None:
        if self.heading:  # the client stopped sending mid-head: 400, as h11 answers that
            self._refuse(400)

    def data_received(self, data: bytes) -> None:
        # the keep-alive timer is NOT reset here (uvicorn's is): only a complete head stops it
        heading = self.heading
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.handle_websocket_upgrade()
            return
        except httptools.HttpParserError as exc:
            self._refuse(431 if isinstance(exc.__context__, HeadTooLarge) else 400)
            return
        if self.heading:
            if heading:  # the head was incomplete before and after this chunk: all of it is head
                self.head_read += len(data)
            if max(self.head_read, self.head_seen) > self.limits.max_head:
                self._refuse(431)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.heading, self.head_seen, self.head_read, self.host = True, 0, 0, False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_seen += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        value = value.rstrip(b" \t")  # as uvicorn: llhttp keeps trailing whitespace
        self.head_seen += len(name) + len(value) + 4
        if self.head_seen > MAX_RECV:
            raise HeadTooLarge()
        if name == b"host":
            self.host = True
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        """uvicorn's, with its Cycle (the head written with the body), Host required and the
        requests per connection counted."""
        self.heading = False
        self._unset_keepalive_if_required()
        parser = self.parser
        http_version = parser.get_http_version()
        if not self.host and http_version == "1.1":
            raise MissingHost()
        scope = self.scope
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade():
            return  # Hypercorn's (handle_websocket_upgrade, once the parser stops)
        url = httptools.parse_url(self.url)
        raw_path = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = url.query or b""
        self.requests += 1
        existing = self.cycle
        self.cycle = Cycle(
            scope=scope,
            transport=self.writer,  # type: ignore[arg-type]
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=False,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0"
            and parser.should_keep_alive()
            and self.requests < self.limits.max_requests,
            on_response=self.on_response_complete,
        )
        if existing is None or existing.response_complete:
            self._start_asgi_task(self.cycle, self.app)
        else:  # pipelined: queued until the one before is answered
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.app))

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle.response_complete and cycle.more_body and not self.transport.is_closing():
            # answered before its body arrived (413, 401...): Hypercorn closes rather than read on
            self.server_state.total_requests += 1
            self.transport.close()
            return
        super().on_response_complete()

    def _should_upgrade(self) -> bool:
        return True  # every upgrade the parser sees (websocket, h2c, CONNECT) is Hypercorn's

    def handle_websocket_upgrade(self) -> None:
        """A request asking for an upgrade on this keep-alive connection: Hypercorn takes the
        connection from this request's head on (rebuilt from the parsed one, as uvicorn does)."""
        self._unset_keepalive_if_required()
        self.connections.discard(self)
        if self.scope is None or "method" not in self.scope or not (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # an upgrade pipelined behind a request still being answered
            return
        head = [self.scope["method"].encode("ascii"), b" ", self.url, b" HTTP/1.1\r\n"]
        for name, value in self.scope["headers"]:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        self.hand_on(self.transport, b"".join(head))

    def send_400_response(self, msg: str) -> None:
        self._refuse(400)

    def _refuse(self, status: int) -> None:
        """As Hypercorn answers what h11 cannot parse: the status, an empty body, then close."""
        self._unset_keepalive_if_required()
        if self.transport.is_closing():
            return
        self.transport.write(refusal(status, self.server_state.default_headers))
        self.transport.close()

    def _idle_too_long(self) -> None:
        self.timeout_keep_alive_task = None
        if not self.transport.is_closing():
            self.transport.close()


class Writer:
    """What a Cycle writes through: a response's head is held until what follows it (the body, or
    a close), so a response is one write: one syscall and, over loopback, one wake-up of the client
    instead of two (uvloop writes at once; Hypercorn's was patched the same way:
    patches.coalesce_response_head)."""

    __slots__ = ("transport", "holding", "held")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.holding = False
        self.held = b""

    def write(self, data: bytes) -> None:
        if self.holding:
            self.held += data
            return
        if self.held:
            data, self.held = self.held + data, b""
        self.transport.write(data)

    def flush(self) -> None:
        if self.held:
            data, self.held = self.held, b""
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class Cycle(RequestResponseCycle):
    """uvicorn's request/response cycle writing the response head together with the body."""

    async def send(self, message) -> None:
        writer: Writer = self.transport  # type: ignore[assignment]
        if not self.response_started and message["type"] == "http.response.start":
            writer.holding = True
            try:
                await super().send(message)
            finally:
                writer.holding = False
            return
        await super().send(message)
        if writer.held:  # the response ended without a body write (HEAD, an empty body)
            writer.flush()
