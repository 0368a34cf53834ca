"""The node's frame budget (sync_server.sync.intake) in-process: large frames wait for the budget
(their socket is not read meanwhile), the oldest one may pass it alone, small frames never wait,
and a connection that ends gives back everything it held."""

from __future__ import annotations

import asyncio

from sync_server.sync.intake import SMALL, FrameBudget, Intake

CHUNK = 64 * 1024


async def _receive(intake: Intake, size: int, log: list, name: str) -> None:
    """What the patched Hypercorn stream does for one message of `size` bytes, chunk by chunk."""
    buffered = 0
    while buffered < size:
        n = min(CHUNK, size - buffered)
        assert await intake.chunk(n, buffered)
        buffered += n
    intake.complete()
    log.append(name)


async def test_large_frames_over_the_budget_are_read_one_after_the_other_and_all_finish():
    budget = FrameBudget(1024 * 1024)
    a, b, c = (Intake(budget, 64 * 1024 * 1024) for _ in range(3))
    done: list[str] = []
    ta = asyncio.ensure_future(_receive(a, 3 * 1024 * 1024, done, "a"))  # 3x the budget
    await asyncio.sleep(0)
    tb = asyncio.ensure_future(_receive(b, 2 * 1024 * 1024, done, "b"))
    await asyncio.wait_for(ta, 5)  # the oldest passes the budget alone
    assert done == ["a"] and not tb.done() and budget.waits >= 1
    assert budget.used <= 3 * 1024 * 1024 + budget.limit
    # a small frame of a third connection goes at once, whatever the budget holds
    await asyncio.wait_for(_receive(c, SMALL, done, "c"), 1)
    assert done == ["a", "c"]
    await asyncio.sleep(0.05)
    assert not tb.done()  # b waits while a's frame is not yet applied: its socket is not read
    a.done()  # the endpoint applied a's frame
    c.done()
    await asyncio.wait_for(tb, 5)
    assert done == ["a", "c", "b"]
    b.done()
    assert budget.used == 0 and budget.peak <= 4 * 1024 * 1024 + SMALL


async def test_a_frame_over_the_hard_limit_stops_there_and_a_closed_connection_gives_all_back():
    budget = FrameBudget(1024 * 1024)
    intake = Intake(budget, 256 * 1024)
    assert await intake.chunk(200 * 1024, 0)
    assert not await intake.chunk(100 * 1024, 200 * 1024)  # past the limit: refused, nothing kept
    assert budget.used == 0
    other, waiting = Intake(budget, 64 * 1024 * 1024), Intake(budget, 64 * 1024 * 1024)
    await _receive(other, 2 * 1024 * 1024, [], "other")  # holds the whole budget, not yet applied
    task = asyncio.ensure_future(_receive(waiting, 512 * 1024, [], "waiting"))
    await asyncio.sleep(0.05)
    assert not task.done()
    waiting.close()  # its client went away while it waited
    await asyncio.wait_for(task, 1)
    other.close()
    assert budget.used == 0 and waiting.held == 0 and other.held == 0
