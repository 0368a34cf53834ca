"""Credentials for the life of a socket: what a connection was admitted with is checked again while
it stays open, so a socket never outlives the credential that opened it.

- A sync token's expiry closes its connections (4401 "token expired") unless the client handed a new
  token on the same socket first (control.REFRESH: same customer, and it must allow the open doc);
  an API key with an expiry closes its connections then too (4401 "API key expired").
- `revalidate(customer)` asks the Authenticator again for every open connection of the customer
  (the composition root calls it on "api_key_revoked" / "credentials_changed", on every node through
  the control channel): a refusal closes the connection with its code (4401 / 4403); a credential
  that now grants read only turns the connection read-only in place (its writes are ignored and it
  is told once with a permission-denied message, as for any read-only connection).
  `revalidate_all` does it for every open connection when the control subscription is back after
  a loss (pub/sub does not keep what was published meanwhile).

Only the Authenticator runs again, never the `authenticate` hooks (they admit a connection once:
the connection limit counts it there).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from typing import TYPE_CHECKING, Protocol

import structlog

from sync_server.sync import control
from sync_server.sync.connection import UNAUTHORIZED, Connection
from sync_server.sync.hooks import Access, Refused

if TYPE_CHECKING:
    from sync_server.sync.rooms import RoomRegistry

log = structlog.get_logger("sync_server.sync.credentials")

REFRESH_INTERVAL = 1.0  # seconds between two refreshes of one socket (each may cost a database read)


class Authenticator(Protocol):
    async def authenticate(self, slug: str, doc: str, token: str | None, authorization: str | None) -> Access: ...


class Session:
    """One connection's credential and opt-ins (Connection.session)."""

    __slots__ = ("slug", "token", "authorization", "access", "expiry", "acks", "received", "acked", "refreshed_at")

    def __init__(self, slug: str, token: str | None, authorization: str | None, access: Access, acks: bool) -> None:
        self.slug = slug
        self.token = token
        self.authorization = authorization  # kept in memory only, never logged
        self.access = access
        self.expiry: int | None = None  # the whole second (Unix time) its credential expires in
        self.acks = acks  # ?ack=1: the client asked for control.DURABLE messages
        self.received = 0  # update messages received from this connection (write access)
        self.acked = 0  # the last count sent in a DURABLE message
        self.refreshed_at = 0.0


class Credentials:
    def __init__(self, authenticator: Authenticator, rooms: RoomRegistry) -> None:
        """Expiries are kept per whole second (`_due`, its seconds in a heap; a credential closes
        within a second after it expires) and one node-wide timer waits for the earliest: no timer
        per socket (issue 20: bytes per idle connection)."""
        self.authenticator = authenticator
        self.rooms = rooms
        self._due: dict[int, set[Connection]] = {}
        self._seconds: list[int] = []  # heap of the keys of _due
        self._ticker: asyncio.TimerHandle | None = None

    def watch(self, conn: Connection, session: Session) -> None:
        """Attach the session and close the connection when its credential expires."""
        conn.session = session
        self._schedule(conn, session)

    def forget(self, conn: Connection) -> None:
        session = conn.session
        if session is not None:
            self._unschedule(conn, session)

    def _unschedule(self, conn: Connection, session: Session) -> None:
        second = session.expiry
        if second is not None:
            session.expiry = None
            due = self._due.get(second)
            if due is not None:
                due.discard(conn)
                if not due:
                    del self._due[second]  # its heap entry goes when the tick reaches it

    def _schedule(self, conn: Connection, session: Session) -> None:
        self._unschedule(conn, session)
        expires_at = session.access.expires_at
        if expires_at is not None:
            second = math.ceil(expires_at)
            due = self._due.get(second)
            earliest = False
            if due is None:
                due = self._due[second] = set()
                heapq.heappush(self._seconds, second)
                earliest = self._seconds[0] == second
            due.add(conn)
            session.expiry = second
            if self._ticker is None or earliest:  # a second already due has its timer (or a sooner one)
                self._arm()

    def _arm(self) -> None:
        """One timer, for the earliest second due (Unix time: the loop's clock is another one)."""
        if self._ticker is not None:
            self._ticker.cancel()
        delay = max(0.0, self._seconds[0] - time.time())
        self._ticker = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        now = time.time()
        seconds = self._seconds
        while seconds and seconds[0] <= now:
            for conn in self._due.pop(heapq.heappop(seconds), ()):
                if conn.session is not None:
                    conn.session.expiry = None
                self._expired(conn)
        if seconds:
            self._arm()

    @staticmethod
    def _expired(conn: Connection) -> None:
        log.info("sync_credential_expired", customer_id=conn.customer_id, room=conn.doc)
        kind = conn.session.access.credential if conn.session is not None else "token"
        conn.abort(UNAUTHORIZED, "API key expired" if kind == "api_key" else "token expired")

    async def refresh(self, conn: Connection, message: control.Refresh) -> None:
        """A REFRESH from the client: answered with REFRESHED or REFRESH_REFUSED (the connection
        then keeps its current credential and expiry)."""
        session = conn.session
        if session is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - session.refreshed_at < REFRESH_INTERVAL:
            conn.enqueue(control.refused_frame("refreshed too often: at most once a second"))
            return
        session.refreshed_at = loop.time()
        try:
            access = await self.authenticator.authenticate(session.slug, conn.doc, message.token, None)
        except Refused as exc:
            log.info("sync_refresh_refused", customer_id=conn.customer_id, room=conn.doc, reason=exc.reason)
            conn.enqueue(control.refused_frame(exc.reason))
            return
        except Exception:  # the database is away: the socket keeps its token, the client may retry
            log.exception("sync_refresh_failed", customer_id=conn.customer_id, room=conn.doc)
            conn.enqueue(control.refused_frame("could not check the token now: try again"))
            return
        if access.customer_id != conn.customer_id:
            conn.enqueue(control.refused_frame("token is for another customer"))
            return
        session.token, session.authorization, session.access = message.token, None, access
        self._set_mode(conn, access.can_write)
        self._schedule(conn, session)
        conn.enqueue(control.refreshed_frame(int(access.expires_at or 0)))
        log.info("sync_refreshed", customer_id=conn.customer_id, room=conn.doc, expires_at=access.expires_at)

    async def revalidate_all(self) -> int:
        """Check every open connection of this node again (after events may have been missed)."""
        closed = 0
        for customer_id in sorted({room.customer_id for room in self.rooms.rooms() if room.connections}):
            closed += await self.revalidate(customer_id)
        return closed

    async def revalidate(self, customer_id: str, credential: str | None = None) -> int:
        """Check every open connection of the customer (only those opened with `credential`,
        "token" or "api_key", when given) again; returns how many were closed."""
        closed = 0
        for room in self.rooms.rooms(customer_id):
            for conn in tuple(room.connections):
                session = conn.session
                if session is None or conn.close_code is not None:
                    continue
                if credential is not None and session.access.credential != credential:
                    continue
                try:
                    access = await self.authenticator.authenticate(
                        session.slug, conn.doc, session.token, session.authorization
                    )
                except Refused as exc:
                    conn.abort(exc.code, exc.reason)
                    closed += 1
                    continue
                except Exception:  # the database is away: keep the socket, the next change checks again
                    log.exception("sync_revalidate_failed", customer_id=customer_id, room=conn.doc)
                    continue
                session.access = access
                self._set_mode(conn, conn.can_write and access.can_write)
        log.info("sync_credentials_revalidated", customer_id=str(customer_id), closed=closed)
        return closed

    @staticmethod
    def _set_mode(conn: Connection, can_write: bool) -> None:
        if can_write != conn.can_write:
            conn.can_write = can_write
            conn.denied_sent = False
