"""Refused sockets (sync_server.sync.refusals) in-process: held for the hold, at most max_held at
once (past it closed at once), a peer that leaves while held is not waited for, refusal log lines
rate limited per customer and code, a repeated too-big frame recognised per client."""

from __future__ import annotations

import asyncio

import structlog

from sync_server.sync.refusals import Refusals


def _silent_peer():
    forever = asyncio.Event()

    async def receive():
        await forever.wait()
        return {"type": "websocket.disconnect"}

    return receive


async def test_held_at_most_max_held_and_a_leaving_peer_is_not_waited_for():
    refusals = Refusals(hold=0.3, max_held=2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    held = [asyncio.ensure_future(refusals.hold(_silent_peer())) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert refusals.held == 2
    assert await refusals.hold(_silent_peer()) is True  # a third: closed at once
    assert loop.time() - started < 0.2
    assert await asyncio.gather(*held) == [True, True] and loop.time() - started >= 0.3
    assert refusals.held == 0
    frames = iter([{"type": "websocket.receive", "bytes": b"\x00\x00\x01\x00"}, {"type": "websocket.disconnect"}])

    async def leaving():
        return next(frames)

    assert await refusals.hold(leaving) is False  # gone: nothing left to close


async def test_refusal_lines_are_rate_limited_and_a_repeated_too_big_frame_is_recognised():
    refusals = Refusals(hold=0, max_held=0)
    with structlog.testing.capture_logs() as logs:
        for _ in range(50):
            refusals.log_refused("acme", "fleet", 4401, "bad token")
        refusals.log_refused("acme", "fleet", 1013, "connection limit")
        refusals.log_refused("other", "fleet", 4401, "bad token")
    lines = [(x["customer_slug"], x["code"], x["suppressed"]) for x in logs if x["event"] == "sync_refused"]
    assert lines == [("acme", 4401, 0), ("acme", 1013, 0), ("other", 4401, 0)] and refusals.refused == 52
    assert not refusals.too_big_again("c1", "tracks/v/d", "10.0.0.1")
    assert not refusals.too_big_again("c1", "tracks/v/other", "10.0.0.1")
    assert refusals.too_big_again("c1", "tracks/v/d", "10.0.0.1")
