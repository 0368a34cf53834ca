"""The room lifecycle hooks (Hocuspocus style): the core runs connections and rooms and calls these
named hooks; persistence, materialization, cross-node fan-out, quotas and metrics plug in here
without editing the core.

Subclass `RoomHooks`, override what you need, and add an instance at wiring time:
    runtime.rooms.hooks.add(MyHooks())          # in create_app, or in an on_start hook
Hooks run by priority (lower first), then in the order added; a failing hook is logged and never breaks the room or the connection
(except `authenticate`, whose `Refused` is the answer to the client).

Hot path: `change` and `awareness` are awaited for every update a room receives. Keep them quick
(queue work, spawn a task); never await a database round trip per update there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from sync_server.sync.connection import Connection
    from sync_server.sync.rooms import Room

log = structlog.get_logger("sync_server.sync.hooks")


class Origin:
    """Where an update came from; passed to `change` and `awareness` hooks."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"Origin({self.kind})"


REMOTE = Origin("remote")  # injected from another node (Redis fan-out): do not re-publish, not persisted here
HTTP = Origin("http")  # POST /api/v1/docs/{doc}/updates
SERVER = Origin("server")  # the server's own awareness state (Room.server_awareness)


def is_remote(origin: Any) -> bool:
    return origin is REMOTE


@dataclass(frozen=True)
class Access:
    """An accepted connection's customer and mode, from the authenticator."""

    customer_id: str
    can_write: bool
    credential: str  # "token" or "api_key"
    expires_at: float | None = None  # epoch seconds: the connection is closed then (sync/credentials.py)
    session: str = ""  # the sign-in session the credential belongs to ("" for none): closed with it


class Refused(Exception):
    """Raised by an `authenticate` hook: the connection is closed with `code` (4401/4403) and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class ConnectRequest:
    """What an `authenticate` hook sees before any document is loaded."""

    customer_id: str
    customer_slug: str
    doc: str
    can_write: bool
    credential: str  # "token" or "api_key"
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # as in the ASGI scope

    @cached_property
    def headers(self) -> dict[str, str]:
        """The request's headers by lower-case name (decoded when a hook first asks)."""
        return {k.decode("latin1").lower(): v.decode("latin1") for k, v in self.raw_headers}


class RoomHooks:
    """No-op base; override the hooks you need (all async)."""

    async def authenticate(self, request: ConnectRequest) -> None:
        """Before a room is joined: raise Refused to turn the connection away."""

    async def load(self, room: Room) -> None:
        """The room's doc was just created: fill it (persistence) or look at it (materialization).
        Runs once per load, before any client joins; room.ydoc holds what earlier hooks loaded."""

    async def change(self, room: Room, update: bytes, origin: Any) -> None:
        """An update was applied to room.ydoc. origin: the Connection, HTTP, or REMOTE."""

    async def awareness(self, room: Room, frame: bytes, origin: Any) -> None:
        """An awareness frame (already validated) was accepted and relayed to local clients."""

    async def received(self, room: Room, connection: Connection) -> None:
        """An update message of a connection that asked for durable acknowledgements was handled
        (applied, held or dropped as nothing new); connection.session.received counts them."""

    async def store(self, room: Room) -> None:
        """Make everything the room holds durable (before eviction and on shutdown)."""

    async def connect(self, room: Room, connection: Connection) -> None:
        """A connection joined the room (after its sync step 1 was queued)."""

    async def disconnect(self, room: Room, connection: Connection) -> None:
        """A connection left the room (cleanly or not); its presence was already removed."""

    async def evict(self, room: Room) -> None:
        """The room is about to leave memory (idle, empty, durable)."""

    async def refused(self, code: int, reason: str) -> None:
        """A connection was closed with `code` before it joined a room (bad path, refused
        credential, shutting down, the document could not be loaded)."""


PERSISTENCE = -100  # priority of the persistence hook: first


class HookList:
    """The ordered hooks the core calls."""

    def __init__(self) -> None:
        self._entries: list[tuple[int, int, RoomHooks]] = []
        self._hooks: list[RoomHooks] = []
        self._change: list[RoomHooks] = []
        self._awareness: list[RoomHooks] = []
        self._received: list[RoomHooks] = []
        self._staged: dict[str, list[RoomHooks]] = {}

    def add(self, hooks: RoomHooks, *, priority: int = 0) -> None:
        """Add `hooks`; lower priorities run first, equal ones in the order added (persistence is
        added with PERSISTENCE so the doc is loaded, and updates are logged, before anything else)."""
        self._entries.append((priority, len(self._entries), hooks))
        self._entries.sort(key=lambda e: (e[0], e[1]))
        self._hooks = [h for _, _, h in self._entries]
        # Only hooks that override change/awareness are called on the hot path.
        self._change = [h for h in self._hooks if type(h).change is not RoomHooks.change]
        self._awareness = [h for h in self._hooks if type(h).awareness is not RoomHooks.awareness]
        self._received = [h for h in self._hooks if type(h).received is not RoomHooks.received]
        # ... and on every join: the hooks a connection's authenticate / connect / disconnect reaches
        self._staged = {
            stage: [h for h in self._hooks if getattr(type(h), stage) is not getattr(RoomHooks, stage)]
            for stage in ("authenticate", "connect", "disconnect")
        }

    def __iter__(self):
        return iter(self._hooks)

    async def authenticate(self, request: ConnectRequest) -> None:
        for h in self._staged["authenticate"]:
            await h.authenticate(request)  # Refused propagates: it is the answer

    async def load(self, room: Room) -> None:
        # A failing load must fail the room (clients would otherwise see an empty document and the
        # next write would look like data loss), so load errors propagate.
        for h in self._hooks:
            await h.load(room)

    async def change(self, room: Room, update: bytes, origin: Any) -> None:
        for h in self._change:
            try:
                await h.change(room, update, origin)
            except Exception:
                log.exception("hook_failed", hook=type(h).__name__, stage="change", room=room.name)

    async def awareness(self, room: Room, frame: bytes, origin: Any) -> None:
        for h in self._awareness:
            try:
                await h.awareness(room, frame, origin)
            except Exception:
                log.exception("hook_failed", hook=type(h).__name__, stage="awareness", room=room.name)

    async def received(self, room: Room, connection: Connection) -> None:
        for h in self._received:
            try:
                await h.received(room, connection)
            except Exception:
                log.exception("hook_failed", hook=type(h).__name__, stage="received", room=room.name)

    async def store(self, room: Room) -> None:
        # Errors propagate: the caller must not forget a room that is not durable.
        for h in self._hooks:
            await h.store(room)

    async def _each(self, stage: str, room: Room, *args) -> None:
        for h in self._staged.get(stage, self._hooks):
            try:
                await getattr(h, stage)(room, *args)
            except Exception:
                log.exception("hook_failed", hook=type(h).__name__, stage=stage, room=room.name)

    async def connect(self, room: Room, connection: Connection) -> None:
        await self._each("connect", room, connection)

    async def disconnect(self, room: Room, connection: Connection) -> None:
        await self._each("disconnect", room, connection)

    async def evict(self, room: Room) -> None:
        await self._each("evict", room)

    async def refused(self, code: int, reason: str) -> None:
        for h in self._hooks:
            try:
                await h.refused(code, reason)
            except Exception:
                log.exception("hook_failed", hook=type(h).__name__, stage="refused")
