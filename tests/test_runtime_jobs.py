"""The runtime's background jobs: a finished job is forgotten at once (every room load and eviction
is one), a running one is cancelled at shutdown, a failed one is logged."""

from __future__ import annotations

import asyncio

from sync_server.config import Settings
from sync_server.domain.runtime import Runtime
from sync_server.sync.rooms import RoomRegistry

from .conftest import TEST_SECRET


def _runtime(database_url: str) -> Runtime:
    return Runtime(Settings(database_url=database_url, secret_key=TEST_SECRET, migrate_on_start=False))


async def test_finished_jobs_leave_the_runtime_and_running_ones_stay(database_url, capsys):
    rt = _runtime(database_url)
    stop = asyncio.Event()
    long_running = rt.spawn(stop.wait(), "long-running")

    async def short() -> None:
        await asyncio.sleep(0)

    async def failing() -> None:
        raise RuntimeError("job broke")

    for i in range(2000):
        rt.spawn(short(), f"short-{i}")
    rt.spawn(failing(), "failing")
    for _ in range(5):
        await asyncio.sleep(0)
    assert rt.running_jobs == 1  # only the one still running
    captured = capsys.readouterr()
    assert "background_job_failed" in captured.out + captured.err  # a failure is still logged
    stop.set()
    await long_running
    assert rt.running_jobs == 0


async def test_rooms_loaded_and_evicted_leave_no_jobs_behind(database_url):
    rt = _runtime(database_url)
    rooms = RoomRegistry(evict_after=0, spawn=rt.spawn)  # no hooks: nothing to load or store
    for i in range(500):
        await rooms.get("customer", f"doc-{i}")  # a load job, then an eviction job per room
    for _ in range(50):
        if not rooms.rooms() and rt.running_jobs == 0:
            break
        await asyncio.sleep(0.01)
    assert rooms.rooms() == [] and rt.running_jobs == 0
