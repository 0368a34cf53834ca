"""`document.updated`: a document changed (debounced per document by
sync_server.extensions.document_changes; this is the announcing side, one tenant transaction).

    {"type": "document.updated", "data": {"doc": "fleet", "state_vector": "<base64 Yjs state vector>"}}

A receiver that keeps a copy of the document asks the server for what it lacks with that state
vector (GET /api/v1/docs/{doc}...). At most one per document per interval across nodes as well:
the dedupe key names the interval (a second node's change in the same interval is announced in
the next one).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
import uuid

from storage import webhooks as store
from storage.registry import DatabaseRegistry
from sync_server.domain.webhooks.outbox import Message, publish

TYPE = "document.updated"


class DocumentAnnouncer:
    def __init__(self, registry: DatabaseRegistry, interval: float) -> None:
        self.registry = registry
        self.interval = interval

    async def __call__(self, customer_id: str, doc: str, state_vector: bytes) -> bool:
        """True when announced (or nobody subscribes), False when this interval already has one."""
        cid = uuid.UUID(customer_id)
        now = dt.datetime.now(dt.UTC)
        slot = math.floor(now.timestamp() / self.interval)
        db = await self.registry.for_customer(customer_id)
        async with db.tenant(cid) as conn:
            if not await store.subscribed(conn, cid, TYPE):
                return True
            message = Message(
                TYPE,
                {"doc": doc, "state_vector": base64.b64encode(state_vector).decode()},
                now,
                ordering_key=f"doc:{_short(doc)}",
                dedupe_key=f"{TYPE}:{slot}:{_short(doc)}",
            )
            return await publish(conn, cid, [message]) > 0


def _short(doc: str) -> str:
    """The document's name in a key (keys are at most 200 characters; names up to 256)."""
    return doc if len(doc) <= 150 else "sha256:" + hashlib.sha256(doc.encode()).hexdigest()
