"""A TCP load balancer for multi-node tests: round robin over the backends, skipping one that refuses
the connection (a dead node), so clients of a killed node reconnect to a live one through the same
URL, as behind a real load balancer."""

from __future__ import annotations

import asyncio
import contextlib


class Balancer:
    def __init__(self, backends: list[int]) -> None:
        self.backends = list(backends)  # ports on 127.0.0.1
        self.assigned: list[int] = []  # the backend port of every accepted connection, in order
        self._next = 0
        self._server: asyncio.AbstractServer | None = None
        self._pipes: set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> Balancer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._pipes.add(task)
        try:
            for _ in range(len(self.backends)):
                port = self.backends[self._next % len(self.backends)]
                self._next += 1
                try:
                    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    continue
                self.assigned.append(port)
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)
                return
        finally:
            writer.close()
            self._pipes.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()
