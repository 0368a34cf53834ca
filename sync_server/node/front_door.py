"""The node's front door (issue 20): the first bytes of every plain TCP connection are read by one
small asyncio Protocol, before Hypercorn builds anything for it.

Hypercorn serves a connection with asyncio's stream objects: `asyncio.start_server` makes a
StreamReader, a StreamReaderProtocol, a StreamWriter and a task per socket, and Hypercorn's
TCPServer then awaits its first read (`websocket_takeover` patch: in a `wait_for`, another task). A
phone's sync socket needs none of that: the lean transport takes it over after the first read. Here
that first read is a `FrontDoor` protocol's `data_received`:

- a websocket upgrade to /sync/ becomes the sync endpoint's (`SyncEndpoint.take_over`: the socket's
  protocol is replaced by a sync.transport WebsocketProtocol), nothing else is built;
- plain HTTP/1.1 requests (REST, the app, health; no upgrade) go to the node's `Http1` service
  (sync_server.node.http1: uvicorn's httptools protocol with Hypercorn's limits) when the CLI set
  one up (`SERVED.http1`, HTTP_TRANSPORT=httptools);
- anything else (websocket upgrades to other paths, HTTP/2, an odd or oversized head) is handed on
  exactly as `start_server` would have: a StreamReaderProtocol is made the transport's protocol,
  told of the connection and given the bytes already read, and Hypercorn's callback runs as before;
- a socket that sends nothing for Hypercorn's `keep_alive_timeout` is closed, as Hypercorn's own
  idle timer closes it.

TLS listeners (the bytes are not plain) go to `asyncio.start_server` untouched. Installed by
sync_server.node.patches (`front_door`), which points Hypercorn's `worker_serve` at `start_server`
below; the endpoint and timeout are the ones `serve` registers before Hypercorn starts.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable
from typing import Any

_DEFAULT_LIMIT = 2**16  # asyncio.start_server's own default


class Served:
    """What the node's listeners serve: the sync endpoint (anything with `take_over`, or None) and
    the time a silent socket is kept."""

    endpoint: Any = None
    silent_timeout: float = 5.0
    http1: Any = None  # sync_server.node.http1.Http1, or None: every non-sync connection is Hypercorn's


SERVED = Served()


class FrontDoor(asyncio.Protocol):
    """A new connection until its first bytes say whose it is."""

    __slots__ = ("_hand_on", "_transport", "_timer")

    def __init__(self, hand_on: Callable[[asyncio.Transport, bytes], None]) -> None:
        self._hand_on = hand_on
        self._transport: Any = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(SERVED.silent_timeout, transport.close)

    def data_received(self, data: bytes) -> None:
        self._stop_timer()
        transport = self._transport
        endpoint = SERVED.endpoint
        if endpoint is not None and endpoint.take_over(transport, data):
            return
        self._hand_on(transport, data)

    def eof_received(self) -> bool:
        self._stop_timer()
        return False  # nothing was asked: close

    def connection_lost(self, exc) -> None:
        self._stop_timer()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def start_server(client_connected_cb, host=None, port=None, *, limit=_DEFAULT_LIMIT, **kwds):
    """`asyncio.start_server` with a FrontDoor on every plain connection; TLS as asyncio does it."""
    if kwds.get("ssl") is not None:
        return await asyncio.start_server(client_connected_cb, host, port, limit=limit, **kwds)
    loop = asyncio.get_running_loop()

    def to_hypercorn(transport: asyncio.Transport, data: bytes) -> None:
        """What asyncio.start_server's protocol factory makes, made now, then fed the bytes read."""
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(data)

    def hand_on(transport: asyncio.Transport, data: bytes) -> None:
        http1 = SERVED.http1
        if http1 is None or not http1.takes(transport, data, to_hypercorn):
            to_hypercorn(transport, data)

    return Listener(await loop.create_server(lambda: FrontDoor(hand_on), host, port, **kwds))


class Listener:
    """The listening server Hypercorn closes at shutdown (it calls `close`, then awaits
    `wait_closed`): the connections the Http1 service serves, which Hypercorn does not know, are shut
    down with it (idle ones closed, busy ones after their response, bounded by graceful_timeout)."""

    def __init__(self, server: asyncio.AbstractServer) -> None:
        self.server = server

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def close(self) -> None:
        self.server.close()
        if SERVED.http1 is not None:
            SERVED.http1.close()

    async def wait_closed(self) -> None:
        if SERVED.http1 is not None:
            await SERVED.http1.wait_closed()
        await self.server.wait_closed()


def asyncio_with_front_door() -> types.ModuleType:
    """A stand-in for the `asyncio` module Hypercorn's run module calls `start_server` on: the
    same module in everything but that one function."""
    module = types.ModuleType("asyncio", "asyncio, with sync_server.node.front_door.start_server")
    module.__dict__.update(asyncio.__dict__)
    module.start_server = start_server  # type: ignore[attr-defined]
    module.has_front_door = True  # type: ignore[attr-defined]
    return module
