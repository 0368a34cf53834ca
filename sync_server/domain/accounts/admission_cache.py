"""What a sync connection's admission reads from the database, kept briefly (issue 20): the customer
a slug names (id, status) and whether a sync token's app session is still signed in. A join storm
of a fleet's phones then authenticates without a database round trip per connection.

Same rules as the API key cache (api_keys.KeyCache): only acceptances are kept (an unknown slug, a
suspended customer or an ended session is always read again), entries live `ttl` seconds and at most
`max_entries` of each kind are held. The credential-revocation events (Runtime.CLUSTER_EVENTS, on
every node) forget at once: "customer_suspended" and "credentials_changed" the customer's entries,
"app_session_ended" the session; "control_resubscribed" (events may have been missed) everything.
A lookup that started before an invalidation cannot put its stale answer back (`generation`). A
change made straight in the database, without an event, is seen within `ttl` seconds.
"""

from __future__ import annotations

import time


class AdmissionCache:
    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.generation = 0  # bumped by every invalidation
        self._customers: dict[str, tuple[float, str]] = {}  # slug -> (deadline, customer id), active only
        self._sessions: dict[str, tuple[float, str]] = {}  # session id -> (deadline, customer id), signed in

    def customer(self, slug: str) -> str | None:
        """The id of the active customer `slug` names, if read within `ttl`."""
        entry = self._customers.get(slug)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._customers[slug]
            return None
        return entry[1]

    def put_customer(self, slug: str, customer_id: str, generation: int) -> None:
        if self._keep(self._customers, generation):
            self._customers[slug] = (time.monotonic() + self.ttl, customer_id)

    def session_active(self, customer_id: str, session_id: str) -> bool:
        """True when the session was read signed in within `ttl` (False: read it)."""
        entry = self._sessions.get(session_id)
        if entry is None or entry[1] != customer_id:
            return False
        if entry[0] <= time.monotonic():
            del self._sessions[session_id]
            return False
        return True

    def put_session(self, customer_id: str, session_id: str, generation: int) -> None:
        if self._keep(self._sessions, generation):
            self._sessions[session_id] = (time.monotonic() + self.ttl, customer_id)

    def _keep(self, entries: dict[str, tuple[float, str]], generation: int) -> bool:
        """Whether an answer read while `generation` was current may be kept (room made for it)."""
        if self.ttl <= 0 or generation != self.generation:
            return False
        if len(entries) >= self.max_entries:
            now = time.monotonic()
            live = {k: e for k, e in entries.items() if e[0] > now}
            entries.clear()
            if len(live) < self.max_entries:
                entries.update(live)
        return True

    def forget_customer(self, customer_id: str) -> None:
        self.generation += 1
        self._customers = {s: e for s, e in self._customers.items() if e[1] != customer_id}
        self._sessions = {k: e for k, e in self._sessions.items() if e[1] != customer_id}

    def forget_all(self) -> None:
        self.generation += 1
        self._customers = {}
        self._sessions = {}

    # -- Runtime listeners (the events cross nodes on the control channel) ----------------------

    async def on_customer_changed(self, customer_id, **_ignored) -> None:
        """customer_suspended / credentials_changed."""
        self.forget_customer(str(customer_id))

    async def on_session_ended(self, customer_id, session_id, **_ignored) -> None:
        self.generation += 1
        self._sessions.pop(str(session_id), None)

    async def on_resubscribed(self, **_ignored) -> None:
        self.forget_all()
