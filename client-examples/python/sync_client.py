#!/usr/bin/env python3
"""A pycrdt client of WebHost Sync over a plain `websockets` loop (the y-websocket protocol).

    python sync_client.py --url ws://127.0.0.1:8080/sync/acme/fleet --token wst1... \
        [--set key=json ...] [--push json ...] [--wait-key key] [--timeout 30]

Connects, syncs (step 1 / step 2), applies --set to Y.Map `m` and --push to Y.Array `a` (each its own
update, sent as the doc emits it), waits for --wait-key to appear in `m` if asked, then prints the
doc's `m` and `a` as one JSON line and leaves. Server-side integrations can instead use an API key:
--api-key whk_live_... (sent as `Authorization: Bearer`).

It needs pycrdt and websockets: run it with the server's virtualenv (`make install`, then
`.venv/bin/python client-examples/python/sync_client.py ...`) or `pip install pycrdt websockets`.
When the server closes the connection (1001 when it shuts down, 44xx when it refuses) or refuses
the upgrade, it says so in one line on stderr and exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

try:
    import pycrdt
    import websockets
    from pycrdt import YMessageType, YSyncMessageType, create_sync_message, create_update_message, handle_sync_message
except ImportError as exc:  # run with a Python that lacks the two libraries
    sys.exit(
        f"sync_client.py needs pycrdt and websockets ({exc.name} is missing): run it with the server's "
        "virtualenv, .venv/bin/python client-examples/python/sync_client.py ..., or pip install pycrdt websockets"
    )


class Closed(Exception):
    """The server closed the connection before the client was done."""


async def run(args: argparse.Namespace) -> dict:
    url = args.url + (f"?token={args.token}" if args.token else "")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    doc = pycrdt.Doc()
    m = doc.get("m", type=pycrdt.Map)
    a = doc.get("a", type=pycrdt.Array)
    synced = asyncio.Event()
    outgoing: asyncio.Queue[bytes] = asyncio.Queue()
    applying_remote = False  # what the server sent is not sent back

    def on_update(event: pycrdt.TransactionEvent) -> None:
        if not applying_remote and event.update != b"\x00\x00":
            outgoing.put_nowait(create_update_message(event.update))

    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:

        async def reader() -> None:
            try:
                await read_frames()
            except websockets.ConnectionClosed:
                pass  # `until` says how it closed

        async def read_frames() -> None:
            nonlocal applying_remote
            async for frame in ws:
                if frame[0] == YMessageType.SYNC:
                    applying_remote = True
                    try:
                        reply = handle_sync_message(frame[1:], doc)
                    finally:
                        applying_remote = False
                    if reply is not None:
                        await ws.send(reply)
                    if frame[1] == YSyncMessageType.SYNC_STEP2:
                        synced.set()
                # awareness (1), auth (2) and anything else: not needed by this client

        async def writer() -> None:
            try:
                while True:
                    await ws.send(await outgoing.get())
            except websockets.ConnectionClosed:
                pass  # the reader ends too

        tasks = [asyncio.create_task(reader()), asyncio.create_task(writer())]

        async def until(condition, what: str) -> None:
            """Wait for `condition()` while the connection lasts, at most --timeout seconds."""
            deadline = asyncio.get_running_loop().time() + args.timeout
            while not condition():
                if tasks[0].done():  # the reader ends when the server closes the connection
                    raise Closed(f"server closed the connection ({ws.close_code} {ws.close_reason or ''}) {what}")
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"{what}: nothing after {args.timeout:g} s")
                await asyncio.sleep(0.02)

        try:
            await ws.send(create_sync_message(doc))
            await until(synced.is_set, "before the document synced")
            sub = doc.observe(on_update)
            for item in args.set or []:
                key, _, value = item.partition("=")
                m[key] = json.loads(value)
            for value in args.push or []:
                a.append(json.loads(value))
            if args.wait_key:
                await until(lambda: args.wait_key in m, f"while waiting for key {args.wait_key!r}")
            await until(outgoing.empty, "before the edits were sent")
            doc.unobserve(sub)
        finally:
            await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
    return {"m": m.to_py(), "a": a.to_py()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="ws://HOST/sync/{customer_slug}/{doc}")
    parser.add_argument("--token", help="sync token (sent as ?token=)")
    parser.add_argument("--api-key", help="API key (sent as Authorization: Bearer)")
    parser.add_argument("--set", action="append", help="key=JSON to set in Y.Map m")
    parser.add_argument("--push", action="append", help="JSON value to append to Y.Array a")
    parser.add_argument("--wait-key", help="wait until this key is in m")
    parser.add_argument("--timeout", type=float, default=30.0)
    try:
        result = asyncio.run(run(parser.parse_args()))
    except (Closed, TimeoutError) as exc:
        sys.exit(f"sync_client.py: {exc}")
    except websockets.ConnectionClosed as exc:
        sys.exit(f"sync_client.py: server closed the connection ({exc.rcvd.code if exc.rcvd else 'no close frame'})")
    except websockets.InvalidStatus as exc:
        sys.exit(f"sync_client.py: the server refused the connection: HTTP {exc.response.status_code}")
    except OSError as exc:
        sys.exit(f"sync_client.py: cannot connect: {exc}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
