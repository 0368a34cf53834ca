"""A real HTTP receiver for webhook tests, in the test process (asyncio + h11): it records every
request and answers as told (`mode`): "ok" (204), "error" (500), "hang" (never answers),
"big" (200 with a huge body), "drip" (200, a byte per 0.2 s). `close()` makes later connections
be refused; `start()` again on the same port recovers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import h11
from standardwebhooks.webhooks import Webhook


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def verified(self, secret: str) -> dict:
        """The payload, verified with the standardwebhooks library (raises if the signature is wrong)."""
        return Webhook(secret).verify(self.body, self.headers)


@dataclass
class Receiver:
    port: int = 0
    mode: str = "ok"
    received: list[Received] = field(default_factory=list)
    answered: list[Received] = field(default_factory=list)  # those that got a 2xx
    _server: asyncio.AbstractServer | None = None
    _tasks: set = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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
                    got = Received(
                        {k.decode().lower(): v.decode() for k, v in request.headers},
                        bytes(body),
                        request.target.decode(),
                    )
                    self.received.append(got)
                    await self._answer(conn, writer, got)
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

    async def _answer(self, conn: h11.Connection, writer: asyncio.StreamWriter, got: Received) -> None:
        mode = self.mode
        if mode == "hang":
            await asyncio.sleep(3600)
        status, body, drip = {
            "ok": (204, b"", False),
            "error": (500, b'{"error":"receiver broke"}', False),
            "big": (200, b"x" * (8 * 1024 * 1024), False),
            "drip": (200, b"y" * 1000, True),
        }[mode]
        headers = [("content-length", str(len(body)))] if status != 204 else []
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
        if drip:
            for i in range(len(body)):
                writer.write(conn.send(h11.Data(data=body[i : i + 1])))
                await writer.drain()
                await asyncio.sleep(0.2)
        elif body:
            writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        if 200 <= status < 300:
            self.answered.append(got)


async def _serve_until_stdin_closes() -> None:
    """`python -m tests.support.webhook_receiver`: an "ok" receiver on a free port (printed), in its
    own process (bench/webhook_outbox.py), until stdin closes; prints the requests it got."""
    import sys

    receiver = await Receiver().start()
    print(receiver.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    print(len(receiver.received), flush=True)
    await receiver.close()


if __name__ == "__main__":
    asyncio.run(_serve_until_stdin_closes())
