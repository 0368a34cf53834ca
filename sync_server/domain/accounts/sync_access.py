"""Who may open which sync document: a sync token (customer, doc patterns, mode, expiry) or a server
client's API key (sync:read / sync:write). The websocket endpoint calls this before any document is
loaded; a refusal is a hooks.Refused with the close code (4401 bad credential, 4403 not allowed)."""

from __future__ import annotations

import asyncio

from storage import tenants
from storage.registry import DatabaseRegistry
from sync_server.domain.accounts import api_keys, sync_tokens, user_sessions
from sync_server.domain.accounts.admission_cache import AdmissionCache
from sync_server.sync.connection import FORBIDDEN, UNAUTHORIZED
from sync_server.sync.hooks import Access, Refused


class SyncAccess:
    def __init__(
        self,
        registry: DatabaseRegistry,
        secret_key: str,
        api_key_cache: api_keys.KeyCache,
        admissions: AdmissionCache | None = None,
    ) -> None:
        """admissions: the node's cache of customers and signed-in sessions (Runtime.admissions):
        a token's join then reads the database only when the cache has no acceptance for it."""
        self.registry = registry
        self.tokens = sync_tokens.VerifiedTokens(secret_key)
        self.api_key_cache = api_key_cache
        self.admissions = admissions or AdmissionCache(0)
        # slug -> the one read of it in flight: a fleet reconnecting at once (a node restart) asks
        # the database once per customer, not once per phone, while the cache has no answer yet
        self._reading: dict[tuple[str, int], asyncio.Future] = {}

    def is_token(self, value: str) -> bool:
        return sync_tokens.looks_like_token(value)

    async def authenticate(self, slug: str, doc: str, token: str | None, authorization: str | None) -> Access:
        registry = self.registry
        if token:
            try:
                grant = self.tokens.verify(token)
            except sync_tokens.TokenError as exc:
                raise Refused(UNAUTHORIZED, exc.reason) from None
            if grant.customer_slug != slug:
                raise Refused(FORBIDDEN, "token is for another customer")
            if not grant.allows(doc):
                raise Refused(FORBIDDEN, "token does not allow this document")
            await self._customer_active(slug, grant.customer_id)
            if grant.session_id:
                await self._session_active(grant.customer_id, grant.session_id)
            return Access(
                grant.customer_id,
                grant.can_write,
                "token",
                expires_at=float(grant.expires_at),
                session=grant.session_id,
            )
        scheme, _, raw = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and raw.strip():
            try:
                principal = await api_keys.authenticate(registry, raw.strip(), cache=self.api_key_cache)
            except api_keys.KeyRejected as exc:
                raise Refused(FORBIDDEN if exc.code == "customer_suspended" else UNAUTHORIZED, exc.message) from None
            if principal.customer_slug != slug:
                raise Refused(FORBIDDEN, "API key is for another customer")
            expires = principal.expires_at.timestamp() if principal.expires_at is not None else None
            if principal.has("sync:write"):
                return Access(principal.customer_id, True, "api_key", expires_at=expires)
            if principal.has("sync:read"):
                return Access(principal.customer_id, False, "api_key", expires_at=expires)
            raise Refused(FORBIDDEN, "API key lacks sync:read / sync:write")
        raise Refused(UNAUTHORIZED, "missing token")

    async def _customer_active(self, slug: str, customer_id: str) -> None:
        cache = self.admissions
        if cache.customer(slug) == customer_id:
            return
        generation = cache.generation
        customer = await self._read_customer(slug, generation)
        if customer is None or str(customer["id"]) != customer_id:
            raise Refused(FORBIDDEN, "unknown customer")
        if customer["status"] != "active":
            raise Refused(FORBIDDEN, "customer suspended")
        cache.put_customer(slug, customer_id, generation)

    def _read_customer(self, slug: str, generation: int) -> asyncio.Future:
        """The customer row `slug` names, read once for every connection that asks while the read
        runs; a read started before an invalidation (`generation`) is not shared with later askers."""
        key = (slug, generation)
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(tenants.find_by_slug(self.registry.shared, slug))
            self._reading[key] = reading
            reading.add_done_callback(lambda done: self._read_done(key, done))
        return asyncio.shield(reading)  # a connection that goes away does not cancel the others' read

    def _read_done(self, key: tuple[str, int], done: asyncio.Future) -> None:
        if self._reading.get(key) is done:
            del self._reading[key]
        if not done.cancelled():
            done.exception()  # retrieved: every asker that is still there gets it from its own await

    async def _session_active(self, customer_id: str, session_id: str) -> None:
        cache = self.admissions
        if cache.session_active(customer_id, session_id):
            return
        generation = cache.generation
        if not await user_sessions.session_active(self.registry, customer_id, session_id):
            raise Refused(UNAUTHORIZED, "signed out")
        cache.put_session(customer_id, session_id, generation)
