"""Every patch of a third-party library's internals, in one place (issue 14).

Each patch replaces a private piece of Hypercorn or wsproto for a measured reason (its docstring says
which). Private code changes without notice, so each one has a guard that checks the internals it
replaces still look as they did on the pinned versions (pyproject: hypercorn, wsproto, h11 minor
ranges); when a guard fails the patch stays off and a WARNING `third_party_patch_off` says which and
why: the server still works, only slower. tests/test_patches.py asserts that on the pinned versions
every guard passes and every patch is active, so an upgrade that changes the internals fails a test
instead of switching a patch off in silence.

The one other reach into Hypercorn, `sync_server.sync.wire.raw_writer` (per connection, in the sync
core), keeps its own guard there and logs the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from importlib import metadata

import structlog

log = structlog.get_logger("sync_server.node.patches")


@dataclasses.dataclass(frozen=True)
class Patch:
    name: str
    package: str  # the distribution whose internals it replaces (for the log line)
    guard: Callable[[], str | None]  # None: the internals are as expected; else why not
    install: Callable[[], None]
    active: Callable[[], bool]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _names(func: object) -> set[str]:
    """The global and attribute names a function's code uses: the shape a guard compares."""
    code = getattr(func, "__code__", None)
    return set(code.co_names) if code is not None else set()


# -- permessage-deflate declined ----------------------------------------------------------------


def _deflate_guard() -> str | None:
    try:
        from hypercorn.protocol import ws_stream
    except ImportError as exc:
        return f"import failed: {exc}"
    if not hasattr(ws_stream, "PerMessageDeflate"):
        return "hypercorn.protocol.ws_stream.PerMessageDeflate is gone"
    accept = getattr(getattr(ws_stream, "Handshake", None), "accept", None)
    if "PerMessageDeflate" not in _names(accept):
        return "Handshake.accept no longer builds its extensions from the module's PerMessageDeflate"
    return None


def _deflate_install() -> None:
    """Hypercorn always accepts permessage-deflate (no setting). Compressing every small Yjs frame
    cost ~15% of the relay CPU here and the reference y-websocket server (ws, default options) does
    not compress either, so the offer is declined: peers fall back to plain frames."""
    from hypercorn.protocol import ws_stream
    from wsproto.extensions import Extension

    class DeclinedDeflate(Extension):
        name = "permessage-deflate"
        declines_deflate = True

        def offer(self) -> bool:
            return False

        def accept(self, offer: str) -> bool:
            return False

    ws_stream.PerMessageDeflate = DeclinedDeflate  # type: ignore[misc,assignment]


def _deflate_active() -> bool:
    from hypercorn.protocol import ws_stream

    return getattr(ws_stream.PerMessageDeflate, "declines_deflate", False)


# -- HTTP/1.1 response head written with its body ---------------------------------------------


def _head_guard() -> str | None:
    try:
        import h11  # noqa: F401
        from hypercorn.events import RawData  # noqa: F401
        from hypercorn.protocol.events import StreamClosed  # noqa: F401
        from hypercorn.protocol.h11 import H11Protocol
    except ImportError as exc:
        return f"import failed: {exc}"
    if getattr(H11Protocol, "coalesces_response_head", False):
        return None
    send_event = getattr(H11Protocol, "_send_h11_event", None)
    stream_send = getattr(H11Protocol, "stream_send", None)
    if not (callable(send_event) and callable(stream_send)):
        return "H11Protocol._send_h11_event / stream_send are gone"
    # the replacement re-does exactly this: connection.send(event), then one self.send(RawData(...))
    if not {"connection", "send", "RawData", "LocalProtocolError", "their_state"} <= _names(send_event):
        return "H11Protocol._send_h11_event no longer sends RawData(connection.send(event))"
    if "_send_h11_event" not in _names(stream_send):
        return "H11Protocol.stream_send no longer writes through _send_h11_event"
    return None


def _head_install() -> None:
    """Hypercorn's HTTP/1.1 protocol writes a response's head and its body with two writes: two
    syscalls and, over loopback, two wakeups of the client (strace: every REST answer). Hold the
    head back and write it together with what follows it (the body, the end of the message, or
    nothing when the stream closes first). Interim responses (100, 101) are written at once."""
    import h11
    from hypercorn.events import RawData
    from hypercorn.protocol.events import StreamClosed
    from hypercorn.protocol.h11 import H11Protocol

    send_event = H11Protocol._send_h11_event
    stream_send = H11Protocol.stream_send

    async def _send_h11_event(self, event) -> None:
        held = self.__dict__.pop("held_head", b"")
        if not held and not isinstance(event, h11.Response):
            await send_event(self, event)
            return
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            data = b""
        if isinstance(event, h11.Response):
            self.held_head = held + data
        else:
            await self.send(RawData(data=held + data))

    async def _stream_send(self, event) -> None:
        if isinstance(event, StreamClosed) and self.__dict__.get("held_head"):
            await self.send(RawData(data=self.__dict__.pop("held_head")))
        await stream_send(self, event)

    H11Protocol._send_h11_event = _send_h11_event  # type: ignore[method-assign]
    H11Protocol.stream_send = _stream_send  # type: ignore[method-assign]
    H11Protocol.coalesces_response_head = True  # type: ignore[attr-defined]


def _head_active() -> bool:
    from hypercorn.protocol.h11 import H11Protocol

    return getattr(H11Protocol, "coalesces_response_head", False)


# -- status lines with their reason phrase ------------------------------------------------------


def _reason_guard() -> str | None:
    try:
        from h11 import _writers
    except ImportError as exc:
        return f"import failed: {exc}"
    if getattr(_writers, "writes_reason_phrase", False):
        return None
    from h11._state import IDLE, SEND_RESPONSE, SERVER

    writers = getattr(_writers, "WRITERS", None)
    original = getattr(_writers, "write_any_response", None)
    if not isinstance(writers, dict) or original is None:
        return "h11._writers.WRITERS / write_any_response are gone"
    if writers.get((SERVER, IDLE)) is not original or writers.get((SERVER, SEND_RESPONSE)) is not original:
        return "h11 no longer writes server responses with write_any_response"
    if not {"status_code", "reason", "write_headers", "headers", "http_version"} <= _names(original):
        return "write_any_response no longer writes status_code, reason and write_headers"
    return None


def _reason_install() -> None:
    """h11 writes `HTTP/1.1 201 ` when the response has no reason, and Hypercorn never gives one:
    some clients and proxies log such status lines as malformed (issue 21). Write the standard
    phrase (`HTTP/1.1 201 Created`) when the response carries none."""
    from http import HTTPStatus

    from h11 import _writers
    from h11._state import IDLE, SEND_RESPONSE, SERVER
    from h11._util import LocalProtocolError

    phrases = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
    write_headers = _writers.write_headers

    def write_any_response(response, write) -> None:
        if response.http_version != b"1.1":
            raise LocalProtocolError("I only send HTTP/1.1")
        reason = response.reason or phrases.get(response.status_code, b"")
        write(b"HTTP/1.1 %d %s\r\n" % (response.status_code, reason))
        write_headers(response.headers, write)

    _writers.WRITERS[(SERVER, IDLE)] = write_any_response
    _writers.WRITERS[(SERVER, SEND_RESPONSE)] = write_any_response
    _writers.writes_reason_phrase = True  # type: ignore[attr-defined]


def _reason_active() -> bool:
    from h11 import _writers

    return getattr(_writers, "writes_reason_phrase", False)


# -- client frames unmasked by 32-bit words -----------------------------------------------------


def _unmask_guard() -> str | None:
    try:
        import numpy  # noqa: F401
        from wsproto import frame_protocol
    except ImportError as exc:
        return f"import failed: {exc}"
    masker = getattr(frame_protocol, "XorMaskerSimple", None)
    if masker is None:
        return "wsproto.frame_protocol.XorMaskerSimple is gone"
    if getattr(masker, "unmasks_words", False):
        return None
    try:
        probe = masker(b"\x00\x01\x02\x03")
    except TypeError:
        return "XorMaskerSimple(key) no longer constructs"
    if probe.__dict__.get("_masking_key") != b"\x00\x01\x02\x03" or not callable(getattr(masker, "process", None)):
        return "XorMaskerSimple no longer keeps _masking_key / process"
    if "_masking_key" not in _names(masker.process):
        return "XorMaskerSimple.process no longer rotates _masking_key"
    return None


def _unmask_install() -> None:
    """wsproto unmasks what clients send with bytes.translate over four strided slices: ~7 ns a
    byte, so a phone's 3.6 MB offline day held the event loop ~25 ms (py-spy: 1 in 14 of the loop's
    samples during a 4-phone upload). XOR of the payload's 32-bit words with the key (numpy) does the
    same in ~1 ms; the key rotates across a frame's chunks exactly as wsproto's does."""
    import numpy as np
    from wsproto import frame_protocol

    masker = frame_protocol.XorMaskerSimple

    def process(self, data) -> bytearray:
        data = bytearray(data)
        n = len(data)
        if n:
            key = bytes(self._masking_key)
            whole = n - n % 4
            if whole:
                words = np.frombuffer(data, dtype=np.uint32, count=whole // 4)
                np.bitwise_xor(words, np.frombuffer(key, dtype=np.uint32)[0], out=words)
            for i in range(whole, n):
                data[i] ^= key[i - whole]
            self._masking_key = key[n % 4 :] + key[: n % 4]
        return data

    masker.wsproto_process = masker.process  # type: ignore[attr-defined]  # kept for the equivalence test
    masker.process = process  # type: ignore[method-assign]
    masker.unmasks_words = True  # type: ignore[attr-defined]


def _unmask_active() -> bool:
    from wsproto import frame_protocol

    return getattr(frame_protocol.XorMaskerSimple, "unmasks_words", False)


# -- websocket intake: frame budget, hard limit while a frame arrives, pings as activity -------


def _intake_guard() -> str | None:
    try:
        from hypercorn.protocol import ws_stream
        from wsproto.events import CloseConnection, Message, Ping, Pong  # noqa: F401
    except ImportError as exc:
        return f"import failed: {exc}"
    stream = getattr(ws_stream, "WSStream", None)
    if getattr(stream, "reads_sync_intake", False):
        return None
    handle = getattr(stream, "_handle_events", None)
    buffer = getattr(ws_stream, "WebsocketBuffer", None)
    if not callable(handle) or buffer is None:
        return "WSStream._handle_events / WebsocketBuffer are gone"
    # the replacement re-does exactly this loop: events() -> buffer.extend / app_put(to_message) /
    # Ping answered / CloseConnection answered and StreamClosed
    expected = {"connection", "events", "buffer", "extend", "app_put", "to_message", "clear", "Ping", "CloseConnection"}
    if not expected <= _names(handle):
        return "WSStream._handle_events no longer buffers messages and answers pings as on 0.18"
    if not {"value", "length"} <= set(vars(buffer(1))):
        return "WebsocketBuffer no longer keeps value / length"
    return None


def _intake_install() -> None:
    """Hypercorn buffers each websocket message whole before the app sees it, with no bound across
    connections, refuses one past its limit with a bare 1009 (no reason, nothing the app can log)
    and ignores pongs. With an `Intake` on the stream (sync_server.sync.intake, installed by the sync
    endpoint) every chunk is counted in the node's frame budget first (waiting here stops reading
    the socket: TCP backpressure), a message past the hard limit stops being buffered and the
    endpoint refuses it with a reason, and pings and pongs mark the connection alive. Streams
    without an Intake run Hypercorn's own loop."""
    from hypercorn.protocol import ws_stream
    from hypercorn.protocol.events import StreamClosed
    from wsproto.connection import ConnectionState
    from wsproto.events import CloseConnection, Message, Ping, Pong

    original = ws_stream.WSStream._handle_events

    async def _handle_events(self) -> None:
        intake = self.__dict__.get("sync_intake")
        if intake is None:
            await original(self)
            return
        buffer = self.buffer
        for event in self.connection.events():
            if isinstance(event, Message):
                if intake.closed:
                    continue
                if intake.refusing:  # the rest of a message past the limit: dropped
                    intake.refusing = not event.message_finished
                    continue
                size = buffer.length + len(event.data)
                if not await intake.chunk(len(event.data), buffer.length):
                    buffer.clear()
                    intake.refusing = not event.message_finished
                    await self.app_put({"type": "websocket.receive", "bytes": None, "text": None, "too_big": size})
                    continue
                buffer.extend(event)
                if event.message_finished:
                    intake.complete()
                    await self.app_put(buffer.to_message())
                    buffer.clear()
            elif isinstance(event, Ping):
                intake.alive()
                await self._send_wsproto_event(event.response())
            elif isinstance(event, Pong):
                intake.alive()
            elif isinstance(event, CloseConnection):
                if self.connection.state == ConnectionState.REMOTE_CLOSING:
                    await self._send_wsproto_event(event.response())
                await self.send(StreamClosed(stream_id=self.stream_id))

    ws_stream.WSStream._handle_events = _handle_events  # type: ignore[method-assign]
    ws_stream.WSStream.reads_sync_intake = True  # type: ignore[attr-defined]


def _intake_active() -> bool:
    from hypercorn.protocol import ws_stream

    return getattr(ws_stream.WSStream, "reads_sync_intake", False)


# -- sync websockets taken over by the lean transport --------------------------------------------


def _takeover_guard() -> str | None:
    try:
        import asyncio

        from hypercorn.asyncio import tcp_server
    except ImportError as exc:
        return f"import failed: {exc}"
    server = getattr(tcp_server, "TCPServer", None)
    if getattr(server, "hands_over_sync", False):
        return None
    run, init = getattr(server, "run", None), getattr(server, "__init__", None)
    if not isinstance(getattr(tcp_server, "MAX_RECV", None), int) or not callable(run):
        return "hypercorn.asyncio.tcp_server.TCPServer.run / MAX_RECV are gone"
    if not {"reader", "writer", "_read_data", "protocol", "app"} <= _names(run) | _names(init):
        return "TCPServer no longer reads its StreamReader in run / _read_data"
    if "_buffer" not in _names(asyncio.StreamReader.__init__) or "_transport" not in _names(
        asyncio.StreamWriter.__del__
    ):
        return "asyncio.StreamReader no longer buffers in _buffer / StreamWriter holds no _transport"
    return None


class _Detached:
    """What a handed-over connection's StreamWriter holds instead of the transport, so that
    collecting the writer (StreamWriter.__del__ closes an open transport) leaves the socket alone."""

    @staticmethod
    def is_closing() -> bool:
        return True

    @staticmethod
    def close() -> None:
        pass


def _sync_endpoint(app: object) -> object | None:
    """The object of the app stack (Hypercorn's wrapper -> Quart -> RestEndpoint -> SyncEndpoint)
    that takes connections over, or None."""
    for _ in range(6):
        if app is None:
            return None
        if callable(getattr(app, "take_over", None)):
            return app
        app = getattr(app, "asgi_app", None) or getattr(app, "app", None)
    return None


def silent_timeout(config) -> float:
    """How long a connection that has not sent its first bytes is kept (the front door and the
    takeover): Hypercorn's own idle timer closes such a connection after keep_alive_timeout, and
    read_timeout is None by default, so without this bound a silent socket would be held for ever
    (one fd and one task each)."""
    return config.read_timeout or config.keep_alive_timeout


def _takeover_install() -> None:
    """Hypercorn keeps ~22 KB of objects and several awaits per frame for every open websocket
    (bench/websocket_path.md). Before Hypercorn builds anything for a new connection, its first
    bytes are offered to the app's sync endpoint (`SyncEndpoint.take_over`): a plain websocket
    upgrade to /sync/ becomes a sync.transport WebsocketProtocol on the same socket and Hypercorn's
    task for it ends; anything else (REST, the app, TLS, an odd head) is served by Hypercorn as
    before, from the bytes already read."""
    import asyncio

    from hypercorn.asyncio import tcp_server

    from sync_server.node.front_door import SERVED as served

    server = tcp_server.TCPServer
    original = server.run
    max_recv = tcp_server.MAX_RECV

    async def run(self) -> None:
        endpoint = _sync_endpoint(self.app)
        writer = self.writer
        if endpoint is None or writer.get_extra_info("ssl_object") is not None or served.endpoint is not None:
            # (served.endpoint: the front door offered this connection's first bytes to it already)
            await original(self)
            return
        reader = self.reader
        try:
            first = await asyncio.wait_for(reader.read(max_recv), silent_timeout(self.config))
        except (ConnectionError, OSError, TimeoutError):
            writer.close()
            return
        if first:
            head = first + bytes(reader._buffer)
            if endpoint.take_over(writer.transport, head):  # type: ignore[attr-defined]
                reader._buffer.clear()
                writer._transport = _Detached()
                return
            reader._buffer[0:0] = first  # Hypercorn reads the request from the start
        await original(self)

    server.run = run  # type: ignore[method-assign]
    server.hands_over_sync = True  # type: ignore[attr-defined]


def _takeover_active() -> bool:
    from hypercorn.asyncio import tcp_server

    return getattr(tcp_server.TCPServer, "hands_over_sync", False)


# -- the front door: a connection's first bytes read by one small Protocol ------------------------


def _front_door_guard() -> str | None:
    try:
        import asyncio

        from hypercorn.asyncio import run as hypercorn_run
    except ImportError as exc:
        return f"import failed: {exc}"
    if getattr(getattr(hypercorn_run, "asyncio", None), "has_front_door", False):
        return None
    if getattr(hypercorn_run, "asyncio", None) is not asyncio:
        return "hypercorn.asyncio.run no longer imports the asyncio module as `asyncio`"
    if not {"asyncio", "start_server"} <= _names(getattr(hypercorn_run, "worker_serve", None)):
        return "hypercorn.asyncio.run.worker_serve no longer listens with asyncio.start_server"
    if not {"StreamReader", "StreamReaderProtocol"} <= set(dir(asyncio)):
        return "asyncio has no StreamReader / StreamReaderProtocol"
    return None


def _front_door_install() -> None:
    """Before Hypercorn builds its stream objects and task for a connection, the node's front door
    (sync_server.node.front_door) reads the first bytes: a /sync/ upgrade goes to the lean transport
    with nothing else built, the rest to Hypercorn as asyncio.start_server would have handed it.
    Measured in bench/RESULTS.md (issue 20: connections opened per second)."""
    from hypercorn.asyncio import run as hypercorn_run

    from sync_server.node import front_door

    hypercorn_run.asyncio = front_door.asyncio_with_front_door()


def _front_door_active() -> bool:
    from hypercorn.asyncio import run as hypercorn_run

    return getattr(getattr(hypercorn_run, "asyncio", None), "has_front_door", False)


# -- plain HTTP/1.1 served by uvicorn's httptools protocol ---------------------------------------


_HTTP1_NAMES = {
    # what sync_server.node.http1.Protocol overrides or reads of uvicorn's HttpToolsProtocol
    "data_received": {"parser", "feed_data", "HttpParserUpgrade", "handle_websocket_upgrade"},
    # http1.Protocol.on_headers_complete re-does this one (with its Cycle): the guard compares the shape
    "on_headers_complete": {"cycle", "RequestResponseCycle", "parse_url", "pipeline", "_start_asgi_task"},
    "on_response_complete": {"pipeline", "timeout_keep_alive", "timeout_keep_alive_task", "flow"},
    "on_message_begin": {"headers", "scope", "url", "expect_100_continue"},
    "on_body": {"cycle", "_should_upgrade"},
    "shutdown": {"cycle", "response_complete", "keep_alive", "transport"},
    "_unset_keepalive_if_required": {"timeout_keep_alive_task"},
}


_CYCLE_ARGUMENTS = {
    "scope",
    "transport",
    "flow",
    "logger",
    "access_logger",
    "access_log",
    "default_headers",
    "message_event",
    "expect_100_continue",
    "keep_alive",
    "on_response",
}


def _http1_guard() -> str | None:
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http import httptools_impl
        from uvicorn.server import ServerState
    except ImportError as exc:
        return f"import failed: {exc}"
    protocol = getattr(httptools_impl, "HttpToolsProtocol", None)
    if protocol is None or not isinstance(getattr(httptools_impl, "STATUS_LINE", None), dict):
        return "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol / STATUS_LINE are gone"
    for method, names in _HTTP1_NAMES.items():
        if not names <= _names(getattr(protocol, method, None)):
            return f"HttpToolsProtocol.{method} no longer uses {', '.join(sorted(names - _names(getattr(protocol, method, None))))}"
    cycle = getattr(httptools_impl, "RequestResponseCycle", None)
    if not {"more_body", "response_complete", "on_response", "transport"} <= _names(getattr(cycle, "__init__", None)):
        return "RequestResponseCycle no longer keeps more_body / response_complete / on_response / transport"
    # sync_server.node.http1 builds its Cycle with these arguments and writes through `transport`
    init = getattr(cycle, "__init__", None)
    arguments = set(init.__code__.co_varnames[1 : init.__code__.co_argcount]) if init is not None else set()
    if arguments != _CYCLE_ARGUMENTS:
        return f"RequestResponseCycle takes {sorted(arguments)}, not {sorted(_CYCLE_ARGUMENTS)}"
    if not {"transport", "write", "close", "response_started"} <= _names(getattr(cycle, "send", None)):
        return "RequestResponseCycle.send no longer writes through self.transport"
    if not {"connections", "tasks", "default_headers"} <= _names(ServerState.__init__):
        return "uvicorn.server.ServerState no longer holds connections / tasks / default_headers"
    return None


_http1 = {"usable": False}


def _http1_install() -> None:
    """Hypercorn parses HTTP/1.1 with h11 (Python) and runs each request through several tasks and
    events: about half of a REST request's server CPU (bench/RESULTS_REST.md). Plain HTTP/1.1
    connections are served from the front door by uvicorn's httptools protocol instead
    (sync_server.node.http1, a subclass that keeps Hypercorn's limits), the same app behind it.
    Nothing of uvicorn's is replaced: the subclass overrides the methods the guard checks."""
    _http1["usable"] = True


def _http1_active() -> bool:
    return _http1["usable"]


def front_door_serves(app: object, config, *, http1: bool = True) -> None:
    """What the front door offers connections to (cli serve, before Hypercorn starts): the app's
    sync endpoint, how long a socket that sends nothing is kept (`silent_timeout`), and, with
    `http1` (HTTP_TRANSPORT=httptools) and uvicorn's internals as expected, the Http1 service for
    plain HTTP/1.1 requests, serving the app Hypercorn's wrapper wraps."""
    from sync_server.node import front_door

    if not _front_door_active():
        return  # its guard failed (logged): the websocket_takeover patch offers the bytes instead
    front_door.SERVED.endpoint = _sync_endpoint(app)
    front_door.SERVED.silent_timeout = silent_timeout(config)
    front_door.SERVED.http1 = None
    if http1 and _http1_active():
        from sync_server.node.http1 import Http1

        front_door.SERVED.http1 = Http1(getattr(app, "app", app), config)


PATCHES: tuple[Patch, ...] = (
    Patch("decline_permessage_deflate", "hypercorn", _deflate_guard, _deflate_install, _deflate_active),
    Patch("coalesce_response_head", "hypercorn", _head_guard, _head_install, _head_active),
    Patch("fast_unmasking", "wsproto", _unmask_guard, _unmask_install, _unmask_active),
    Patch("status_reason_phrase", "h11", _reason_guard, _reason_install, _reason_active),
    Patch("websocket_intake", "hypercorn", _intake_guard, _intake_install, _intake_active),
    Patch("websocket_takeover", "hypercorn", _takeover_guard, _takeover_install, _takeover_active),
    Patch("front_door", "hypercorn", _front_door_guard, _front_door_install, _front_door_active),
    Patch("http1_httptools", "uvicorn", _http1_guard, _http1_install, _http1_active),
)


def apply(patch: Patch) -> bool:
    """Install one patch if its guard passes (idempotent); False, with a WARNING, when it stays off."""
    try:
        if patch.active():
            return True
    except (ImportError, AttributeError):
        pass  # the internals are not there: the guard says why
    reason = patch.guard()
    if reason is not None:
        log.warning(
            "third_party_patch_off",
            patch=patch.name,
            package=patch.package,
            version=_version(patch.package),
            reason=reason,
        )
        return False
    patch.install()
    return True


def apply_all() -> dict[str, bool]:
    """Every patch, before the server starts (sync_server.node.cli serve): name -> active."""
    return {patch.name: apply(patch) for patch in PATCHES}
