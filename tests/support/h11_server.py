"""A small HTTP/1.1 server in the test process (asyncio + h11) for the test doubles of the services
the server calls out to (tests/support/stripe_api.py, tests/support/webhook_receiver.py).

A subclass answers each complete request in `handle(request, body)`: a `Reply`, or None to close
the connection without an answer. The base runs the h11 request loop per connection (keep-alive
included), keeps the connection tasks so `close()` ends them, and refuses later connections once
closed (`start()` again on the same port listens again)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Self

import h11


@dataclass
class Reply:
    """An answer: `body` is bytes, or an async iterator of pieces each written and drained before
    the next (a slow server). `sent` runs once the whole answer was written."""

    status: int
    body: bytes | AsyncIterator[bytes] = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    sent: Callable[[], None] | None = None


@dataclass
class H11Server:
    port: int = 0
    _server: asyncio.AbstractServer | None = None
    _tasks: set = field(default_factory=set)

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # no new connections
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:  # after the connections ended: Python 3.12 waits for them here
            await server.wait_closed()

    async def handle(self, request: h11.Request, body: bytes) -> Reply | None:
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request, body = event, bytearray()
                    continue
                if isinstance(event, h11.Data):
                    body += event.data
                    continue
                if isinstance(event, h11.EndOfMessage):
                    reply = await self.handle(request, bytes(body))
                    if reply is None:
                        return
                    await _send(conn, writer, reply)
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                    continue
                return
        except (ConnectionError, h11.ProtocolError, asyncio.CancelledError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, reply: Reply) -> None:
    writer.write(conn.send(h11.Response(status_code=reply.status, headers=reply.headers)))
    if isinstance(reply.body, bytes):
        if reply.body:
            writer.write(conn.send(h11.Data(data=reply.body)))
    else:
        async for piece in reply.body:
            writer.write(conn.send(h11.Data(data=piece)))
            await writer.drain()
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()
    if reply.sent is not None:
        reply.sent()
