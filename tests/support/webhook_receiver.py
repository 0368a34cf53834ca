"""A real HTTP receiver for webhook tests, in the test process (asyncio + h11): it records every
request and answers as told (`mode`): "ok" (204), "error" (500), "hang" (never answers),
"big" (200 with a huge body), "drip" (200, a byte per 0.2 s). `close()` makes later connections
be refused; `start()` again on the same port recovers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h11
from standardwebhooks.webhooks import Webhook

from .h11_server import H11Server, Reply


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
class Receiver(H11Server):
    mode: str = "ok"
    received: list[Received] = field(default_factory=list)
    answered: list[Received] = field(default_factory=list)  # those that got a 2xx

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: h11.Request, body: bytes) -> Reply:
        got = Received({k.decode().lower(): v.decode() for k, v in request.headers}, body, request.target.decode())
        self.received.append(got)
        mode = self.mode
        if mode == "hang":
            await asyncio.sleep(3600)
        status, payload = {
            "ok": (204, b""),
            "error": (500, b'{"error":"receiver broke"}'),
            "big": (200, b"x" * (8 * 1024 * 1024)),
            "drip": (200, b"y" * 1000),
        }[mode]
        headers = [("content-length", str(len(payload)))] if status != 204 else []
        answered = (lambda: self.answered.append(got)) if 200 <= status < 300 else None
        return Reply(status, _drip(payload) if mode == "drip" else payload, headers, answered)


async def _drip(payload: bytes) -> AsyncIterator[bytes]:
    for i in range(len(payload)):
        yield payload[i : i + 1]
        await asyncio.sleep(0.2)


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
