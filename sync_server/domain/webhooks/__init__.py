"""Webhooks (issue 17): the outbox event sources publish to (outbox.py), the endpoints and their
rules (endpoints.py, urls.py), and the delivery worker every node runs (delivery.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sync_server.domain.runtime import Runtime
    from sync_server.domain.webhooks.delivery import DeliveryWorker


def install(rt: Runtime) -> DeliveryWorker:
    """The node's delivery worker: started with the runtime, stopped when it drains (deliveries in
    flight finish or are left to their lease)."""
    from sync_server.domain.webhooks.delivery import DeliveryWorker, policy_from

    worker = DeliveryWorker(rt.registry, policy_from(rt.settings), rt.shutting_down)

    async def start() -> None:
        rt.spawn(worker.run(), "webhook_delivery")

    async def drain() -> None:
        worker.wake()
        await worker.drain(timeout=min(rt.settings.shutdown_timeout, rt.settings.webhook_timeout + 1))

    rt.on_start(start)
    rt.on_drain(drain)
    rt.on_stop(worker.sender.close)
    return worker
