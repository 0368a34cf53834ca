"""The websocket endpoint `/sync/{customer_slug}/{doc}`, served as a raw ASGI websocket application
in front of Quart.

Why not a Quart route: Quart reads every frame into an unbounded queue (a flooding client grows
memory), turns an empty binary frame into None, yields and re-checks acceptance on every send, and
fires a signal per message. Talking ASGI directly keeps Hypercorn's own flow control (it stops
reading the socket when we stop receiving), costs nothing per frame, and makes cleanup explicit.

Order of a connection: accept -> authenticate (token / API key, customer active, doc allowed,
authenticate hooks) -> load room (single flight) -> join (sync step 1 + current presence queued) ->
read frames until the peer leaves or the server closes it. Refusals are closes after accept, a
refused credential or connection held open first (sync.refusals: clients that reconnect as soon as a
socket opens would storm): 4401 (no/bad/expired credential), 4403 (not allowed / suspended), 4400
(malformed), 1009 (too big, with the limit in the reason; 4413 when the same client repeats it),
1013 (does not read), 1001 (shutdown), 1011 (server error: any failure handling one of its frames,
BaseExceptions such as a Rust panic included, closes only that peer).
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import parse_qs

import structlog

from sync_server.sync import control, protocol, wire
from sync_server.sync import transport as transport_module
from sync_server.sync.connection import (
    GOING_AWAY,
    INTERNAL_ERROR,
    MALFORMED,
    MESSAGE_TOO_BIG,
    TOO_BIG_AGAIN,
    Connection,
)
from sync_server.sync.credentials import Credentials, Session
from sync_server.sync.faults import answerable
from sync_server.sync.hooks import Access, ConnectRequest, Refused
from sync_server.sync.intake import FrameBudget, Intake
from sync_server.sync.refusals import Refusals
from sync_server.sync.rooms import Rejected, RoomRegistry

log = structlog.get_logger("sync_server.sync.endpoint")

PREFIX = "/sync/"
DOC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@=+-]*(/[A-Za-z0-9_.:@=+-]+)*$")
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MAX_DOC_LENGTH = 256
CLOSE_TIMEOUT = 5.0


class Authenticator(Protocol):
    """Who may open which document (the composition root passes the accounts domain's)."""

    async def authenticate(self, slug: str, doc: str, token: str | None, authorization: str | None) -> Access:
        """The customer and mode of a connection, or raise hooks.Refused (4401 / 4403)."""

    def is_token(self, value: str) -> bool:
        """Whether a Sec-WebSocket-Protocol entry is a sync token (browsers cannot set query strings)."""


def parse_path(path: str) -> tuple[str, str] | None:
    """(customer slug, doc) of a sync path, or None when it is not a valid one."""
    known = _PATHS.get(path)
    if known is not None:
        return known
    parsed = _parse_path(path)
    if parsed is not None and len(path) <= _PATH_KEPT:
        if len(_PATHS) >= _PATHS_KEPT:
            del _PATHS[next(iter(_PATHS))]
        _PATHS[path] = parsed
    return parsed


# Valid paths parsed lately (a phone reconnects to the documents it had): short ones, the oldest out first.
_PATHS: dict[str, tuple[str, str]] = {}
_PATHS_KEPT, _PATH_KEPT = 4096, len(PREFIX) + 64 + MAX_DOC_LENGTH


def _parse_path(path: str) -> tuple[str, str] | None:
    rest = path[len(PREFIX) :]
    slug, sep, doc = rest.partition("/")
    if not sep or not SLUG.match(slug) or not doc or len(doc) > MAX_DOC_LENGTH or not DOC_NAME.match(doc):
        return None
    if any(part in (".", "..") for part in doc.split("/")):
        return None
    return slug, doc


class SyncEndpoint:
    """ASGI wrapper: websocket requests under /sync/ are served here, everything else by `app`."""

    def __init__(
        self,
        app,
        rooms: RoomRegistry,
        authenticator: Authenticator,
        *,
        max_message: int,
        queue_limit: int,
        queue_bytes: int,
        budget: FrameBudget | None = None,
        refusals: Refusals | None = None,
        on_too_big: Callable[[str, str, int], Awaitable[None]] | None = None,
        lean: bool = True,
    ) -> None:
        """budget: bytes of frames received and not yet applied, node-wide (sync.intake);
        refusals: how refused sockets are held and logged (sync.refusals); on_too_big(customer id,
        doc, bytes): told of every frame refused over `max_message` (the operator's counter)."""
        self.app = app
        self.rooms = rooms
        self.authenticator = authenticator
        self.max_message = max_message
        self.queue_limit = queue_limit
        self.queue_bytes = queue_bytes
        self.budget = budget or FrameBudget(4 * max_message)
        self.refusals = refusals or Refusals(hold=0, max_held=0)
        self.on_too_big = on_too_big
        self.raw_writes = True  # sync_server.sync.wire fast path where the server allows it
        self.lean = lean  # sync.transport serves /sync/ upgrades the server hands over (take_over)
        self._lean_tasks: set[asyncio.Task] = set()
        self.credentials = Credentials(authenticator, rooms)  # expiry, in-band refresh, revalidation

    def take_over(self, transport: asyncio.Transport, head: bytes) -> bool:
        """A connection whose first bytes are `head`: when they are a websocket upgrade to /sync/,
        the socket becomes a sync.transport WebsocketProtocol served here (True); else False and
        the server that asked serves it."""
        if not self.lean:
            return False
        parsed = transport_module.parse_upgrade(head, PREFIX.encode())
        if parsed is None:
            return False
        upgrade, rest = parsed
        peer = transport.get_extra_info("peername")
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "ws",
            "path": upgrade.path,
            "raw_path": upgrade.path.encode(),
            "query_string": upgrade.query,
            "root_path": "",
            "headers": upgrade.headers,
            "client": tuple(peer[:2]) if peer else None,
            "server": None,  # not read on this path (a system call per join saved)
            "subprotocols": upgrade.subprotocols,
            "extensions": {},
        }
        protocol = transport_module.take_over(transport, upgrade, rest)
        task = asyncio.get_running_loop().create_task(
            self.serve(scope, protocol.receive, protocol.send), context=contextvars.Context()
        )
        self._lean_tasks.add(task)
        protocol.tasks = self._lean_tasks
        task.add_done_callback(protocol.served)  # closes the socket, leaves the set (one callback)
        return True

    async def wait_closed(self, timeout: float) -> None:
        """Shutdown: wait (at most `timeout` s) for the lean transport's connections to finish
        their close handshakes (Hypercorn waits for its own)."""
        if self._lean_tasks:
            await asyncio.wait(tuple(self._lean_tasks), timeout=timeout)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket" and scope["path"].startswith(PREFIX):
            await self.serve(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- one connection ---------------------------------------------------------------------------

    async def serve(self, scope, receive, send) -> None:
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        token, subprotocol, acks = _credential_and_opt_ins(scope, self.authenticator.is_token)
        intake = Intake(self.budget, self.max_message)
        intaking = wire.install_intake(send, intake)
        try:
            await send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": []})
            await self._serve(scope, receive, send, token, acks, intake if intaking else None)
        finally:
            intake.close()

    async def _serve(self, scope, receive, send, token: str | None, acks: bool, intake: Intake | None) -> None:
        handled = receive  # frames the reader applies (it tells the intake when each is done)
        if intake is not None:  # what is read and dropped (not applied) leaves the budget at once
            receive = _Dropped(handled, intake)

        parsed = parse_path(scope["path"])
        if parsed is None:
            await self._refuse(receive, send, MALFORMED, "invalid customer or document name")
            return
        slug, doc = parsed
        if not self.rooms.accepting:
            await self._refuse(receive, send, GOING_AWAY, "server shutting down")
            return
        authorization = _header(scope, b"authorization")
        try:
            access = await self.authenticator.authenticate(slug, doc, token, authorization)
            await self.rooms.hooks.authenticate(
                ConnectRequest(
                    access.customer_id,
                    slug,
                    doc,
                    access.can_write,
                    access.credential,
                    scope.get("headers", []),
                )
            )
        except Refused as exc:
            self.refusals.log_refused(slug, doc, exc.code, exc.reason)
            await self.rooms.hooks.refused(exc.code, exc.reason)
            if await self.refusals.hold(receive):
                await _close(receive, send, exc.code, exc.reason)
            return
        structlog.contextvars.bind_contextvars(customer_id=access.customer_id, room=doc)
        raw = wire.raw_writer(scope, send) if self.raw_writes else None
        peer = scope.get("client") or ("", 0)
        conn = Connection(
            raw or _ByMessage(send),
            customer_id=access.customer_id,
            doc=doc,
            can_write=access.can_write,
            queue_limit=self.queue_limit,
            queue_bytes=self.queue_bytes,
            peer=f"{peer[0]}:{peer[1]}",
            raw=raw is not None,
            socket=wire.raw_socket(send) if raw is not None else None,
        )
        try:
            # a cold room's doc is sent to the peer as it loads (a socket that takes frames now)
            room = await self.rooms.get(access.customer_id, doc, early=conn if conn.takes_now() else None)
        except Exception:
            await conn.stop()
            await self._refuse(receive, send, INTERNAL_ERROR, "document could not be loaded")
            return
        except BaseException:
            await conn.stop()
            raise

        self.credentials.watch(conn, Session(slug, token, authorization, access, acks))
        conn.app_session = access.session
        if _lean_transport(send):
            scope.clear()  # joined: the socket's own scope (headers, query with the token) is not read again
        conn.start()
        if intake is not None:
            intake.conn = conn  # pings and pongs count as activity
        self.rooms.join(room, conn)
        log.info(
            "sync_connected",
            mode="rw" if access.can_write else "r",
            credential=access.credential,
            peers=len(room.connections),
        )
        interrupt = getattr(getattr(send, "__self__", None), "interrupt", None)  # sync.transport
        try:
            if interrupt is not None:  # the lean transport: read in this task, no more tasks
                conn.on_abort = interrupt
                await room.hooks.connect(room, conn)
                if conn.close_code is None:
                    await self._read(conn, room, handled, intake)
            else:
                await self._read_until_closed(conn, room, handled, intake)
        finally:
            conn.on_abort = None
            self.credentials.forget(conn)
            await conn.stop()
            room = conn.room or room  # a rebuilt room moved this peer to its fresh copy
            self.rooms.leave(room, conn)
            await room.hooks.disconnect(room, conn)
            log.info("sync_disconnected", code=conn.close_code, reason=conn.close_reason or None)
        if conn.close_code is not None:
            await _close(receive, send, conn.close_code, conn.close_reason)

    async def _refuse(self, receive, send, code: int, reason: str) -> None:
        await self.rooms.hooks.refused(code, reason)
        await _close(receive, send, code, reason)

    async def _read_until_closed(self, conn: Connection, room, receive, intake: Intake | None) -> None:
        """Read in a task of its own until the peer leaves or the server closes it (Hypercorn)."""
        reader = asyncio.ensure_future(self._read(conn, room, receive, intake))
        closing = asyncio.ensure_future(conn.closed.wait())
        try:
            await room.hooks.connect(room, conn)
            await asyncio.wait((reader, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            closing.cancel()

    async def _read(self, conn: Connection, room, receive, intake: Intake | None) -> None:
        limit = self.max_message
        clock = asyncio.get_running_loop().time
        while True:
            event = await receive()
            if event["type"] != "websocket.receive":
                return  # websocket.disconnect: the peer left
            conn.last_seen = clock()
            frame = event.get("bytes")
            too_big = event.get("too_big")
            if too_big is not None or (frame is not None and len(frame) > limit):
                await self._too_big(conn, too_big or len(frame))
                return
            if frame is None:
                log.warning("sync_malformed", error="text frame")
                conn.abort(MALFORMED, "binary frames only")
                return
            try:
                handled = await self._handle(conn, room, frame)
            finally:
                if intake is not None:
                    intake.done()
            if not handled:
                return  # this frame closed the peer. A close decided elsewhere (its sender failed: the
                # peer left) does not stop the reading: frames it sent before leaving are still applied

    async def _too_big(self, conn: Connection, size: int) -> None:
        """Refuse a frame over the hard limit: 1009 with a reason, or 4413 (final for y-websocket
        3.x) when this client sent one within the last minutes; logged and counted for the operator."""
        limit = self.max_message
        again = self.refusals.too_big_again(conn.customer_id, conn.doc, conn.peer.rpartition(":")[0])
        log.warning("sync_frame_too_big", bytes_at_least=size, limit=limit, repeated=again)
        if self.on_too_big is not None:
            try:
                await self.on_too_big(conn.customer_id, conn.doc, size)
            except Exception:
                log.exception("sync_too_big_count_failed")
        if again:
            conn.abort(TOO_BIG_AGAIN, f"message too big again (limit {limit} bytes): not retrying helps")
        else:
            conn.abort(MESSAGE_TOO_BIG, f"message too big (limit {limit} bytes)")

    async def _handle(self, conn: Connection, room, frame: bytes) -> bool:
        """One frame of a joined peer; a failure closes only this peer (False)."""
        try:
            if control.is_control(frame):
                await self._control(conn, frame)
            else:
                await (conn.room or room).receive(conn, frame)
        except protocol.Malformed as exc:
            log.warning("sync_malformed", error=str(exc), bytes=len(frame))
            conn.abort(MALFORMED, "update rejected" if isinstance(exc, Rejected) else "malformed message")
            return False
        except BaseException as exc:  # down to a Rust panic (a BaseException): this peer only
            if not answerable(exc):
                raise
            log.error("sync_message_failed", bytes=len(frame), error=repr(exc), exc_info=exc)
            conn.abort(INTERNAL_ERROR, "server error")
            return False
        return True

    async def _control(self, conn: Connection, frame: bytes) -> None:
        """WebHost's own message type (sync/control.py): an in-band token refresh."""
        message = control.decode(frame)
        if message is not None:
            await self.credentials.refresh(conn, message)


class _ByMessage:
    """The Connection's send where frames cannot be written raw: one ASGI message each."""

    __slots__ = ("send",)

    def __init__(self, send) -> None:
        self.send = send

    async def __call__(self, frame: bytes) -> None:
        await self.send({"type": "websocket.send", "bytes": frame})


class _Dropped:
    """`receive` of a socket with an Intake: a frame read and not applied (the refusal hold, the
    close handshake) leaves the frame budget at once."""

    __slots__ = ("receive", "intake")

    def __init__(self, receive, intake: Intake) -> None:
        self.receive = receive
        self.intake = intake

    async def __call__(self) -> dict:
        event = await self.receive()
        if event["type"] == "websocket.receive" and "too_big" not in event:
            self.intake.done()
        return event


async def _close(receive, send, code: int, reason: str) -> None:
    """Send the close frame, then wait for the peer's close before returning: returning at once
    lets the socket close with the peer's frames unread, the kernel answers with a reset and the
    peer may see 1006 instead of our code (and retry a 4401 forever)."""
    try:
        await asyncio.wait_for(_closing_handshake(receive, send, code, reason), CLOSE_TIMEOUT)
    except Exception:  # the peer is gone or stuck: nothing more to tell it
        pass


async def _closing_handshake(receive, send, code: int, reason: str) -> None:
    await send({"type": "websocket.close", "code": code, "reason": reason[:120]})
    while True:  # until the peer's close (not the lean transport's note that reading stops)
        event = await receive()
        if event["type"] == "websocket.disconnect" and "interrupted" not in event:
            return


def _lean_transport(send) -> bool:
    return isinstance(getattr(send, "__self__", None), transport_module.WebsocketProtocol)


def _opted_in(query: dict[str, list[str]], name: str) -> bool:
    """Whether the parsed query string has `name=1` (or true/yes)."""
    values = query.get(name) or [""]
    return values[0].lower() in ("1", "true", "yes")


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin1")
    return None


def _parse_query(raw: str) -> dict[str, list[str]]:
    """`parse_qs(raw)`; a query with nothing to decode (a token is base64url: no `%`, no `+`) is
    split here, with parse_qs's rules (parts without `=` and empty values are left out)."""
    if "%" in raw or "+" in raw:
        return parse_qs(raw)
    query: dict[str, list[str]] = {}
    for part in raw.split("&"):
        name, _, value = part.partition("=")
        if value:
            query.setdefault(name, []).append(value)
    return query


def _credential_and_opt_ins(scope, is_token) -> tuple[str | None, str | None, bool]:
    """The sync token from `?token=` or a Sec-WebSocket-Protocol entry (then echoed as the chosen
    subprotocol, which browsers require), and whether `?ack=1` asked for durable acknowledgements:
    the query string parsed once."""
    query = _parse_query(scope.get("query_string", b"").decode("latin1"))
    acks = _opted_in(query, "ack")
    values = query.get("token")
    if values and values[0]:
        return values[0], None, acks
    for proto in scope.get("subprotocols") or []:
        if is_token(proto):
            return proto, proto, acks
    return None, None, acks
