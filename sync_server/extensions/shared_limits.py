"""Limits every node enforces together: sync connections per customer (the plan's connection_limit)
and REST requests per credential per minute.

With Redis they are counted there, so a customer cannot pass its limit by spreading over nodes:
  {prefix}conns:{customer}   hash node -> open connections of that node; a Lua script drops the
                             fields of nodes whose heartbeat ({prefix}node:{id}, see fanout) expired,
                             sums the rest and takes a slot atomically. Every heartbeat a node
                             rewrites its own counts, which also restores them after a Redis restart.
  {prefix}rate:{who}         hash slot -> "count:ms of its latest request": a sliding one-minute
                             window (RateLimit); past the limit 429 with Retry-After = seconds until
                             the oldest counted requests leave the window.
Without Redis (one node), or while Redis is unreachable, the same limits are counted in memory by
each node: never unlimited, at worst N times the limit for N nodes during an outage.

GPS points per day are not counted here: the tracking pipeline counts them in PostgreSQL under the
customer's quota lock, which already holds across nodes.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict, defaultdict, deque

import structlog

from sync_server.sync.connection import TRY_AGAIN_LATER, Connection
from sync_server.sync.hooks import ConnectRequest, Refused, RoomHooks
from sync_server.sync.rooms import Room

log = structlog.get_logger("sync_server.extensions.shared_limits")

UNCLAIMED_AFTER = 60.0  # a slot taken by authenticate whose connection never joined is given back
COUNTS_TTL = 86_400
REDIS_TIMEOUT = 1.0

# KEYS[1] the customer's hash; ARGV: node, limit, heartbeat key prefix
_TAKE = """
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
  local node = fields[i]
  if node ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. node) == 0 then
    redis.call('HDEL', KEYS[1], node)
  else
    total = total + tonumber(fields[i + 1])
  end
end
if total >= tonumber(ARGV[2]) then
  return -1
end
redis.call('EXPIRE', KEYS[1], COUNTS_TTL)
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
""".replace("COUNTS_TTL", str(COUNTS_TTL))

WINDOW = 60.0  # seconds: REST_RATE_LIMIT_PER_MINUTE counts the requests of the last minute
SLOTS = 60  # the window is kept as this many counts

# KEYS[1] the credential's hash; ARGV: limit, window ms, slot ms. Redis's clock (TIME) is the one
# clock of every node. Returns 0 (counted) or the ms until a request would be counted.
# RateLimit.hit_local is the same rule in memory.
_HIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, window, width = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
local live = {}
local total = 0
for i = 1, #fields, 2 do
  local count, last = string.match(fields[i + 1], '^(%d+):(%d+)$')
  count, last = tonumber(count), tonumber(last)
  if last <= now - window then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    total = total + count
    live[#live + 1] = {last, count}
  end
end
if total >= limit then
  table.sort(live, function(a, b) return a[1] < b[1] end)
  for _, slot in ipairs(live) do
    total = total - slot[2]
    if total < limit then return math.max(1, slot[1] + window - now) end
  end
  return window
end
local slot = string.format('%d', math.floor(now / width))
local current = redis.call('HGET', KEYS[1], slot)
local count = 1
if current then count = tonumber(string.match(current, '^(%d+)')) + 1 end
redis.call('HSET', KEYS[1], slot, string.format('%d:%d', count, now))
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""

_GIVE = """
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if left <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return left
"""


def _redis_errors():
    from redis.exceptions import RedisError

    return (RedisError, OSError, asyncio.TimeoutError)


class ConnectionLimit(RoomHooks):
    """Refuses a sync connection past the plan's connection_limit (1013: y-websocket clients retry
    with backoff, and get in once a slot is free; a 44xx would stop them for good)."""

    def __init__(self, runtime, redis=None, node: str = "") -> None:
        self.runtime = runtime
        self.redis = redis
        self.node = node
        self.prefix = runtime.settings.redis_prefix
        self._held: dict[str, int] = defaultdict(int)  # this node's slots per customer
        self._unclaimed: dict[str, deque[float]] = defaultdict(deque)
        self._claimed: set[Connection] = set()
        self._take = self._give = None
        if redis is not None:
            self._take = redis.register_script(_TAKE)
            self._give = redis.register_script(_GIVE)

    def _key(self, customer_id: str) -> str:
        return f"{self.prefix}conns:{customer_id}"

    async def limit_of(self, customer_id: str) -> int:
        """The plan's connection_limit, from the node's one plan-limit cache (runtime.plan_limits)."""
        return (await self.runtime.plan_limits.limits(customer_id)).connections

    async def in_use(self, customer_id: str) -> int:
        """The customer's open sync connections on every live node (the slots counted in Redis;
        this node's own without Redis or when it does not answer): the operator console's bar."""
        cid = str(customer_id)
        if self.redis is not None:
            try:
                held = await asyncio.wait_for(self.redis.hgetall(self._key(cid)), REDIS_TIMEOUT)
                nodes = [n.decode() if isinstance(n, bytes) else n for n in held]
                beats = (
                    await asyncio.wait_for(self.redis.mget([f"{self.prefix}node:{n}" for n in nodes]), REDIS_TIMEOUT)
                    if nodes
                    else []
                )
                counts = [int(v) for v in held.values()]
                return sum(c for n, c, beat in zip(nodes, counts, beats) if beat is not None or n == self.node)
            except _redis_errors() as exc:
                log.warning("connection_count_local_fallback", customer_id=cid, error=repr(exc))
        return self._held.get(cid, 0)

    async def authenticate(self, request: ConnectRequest) -> None:
        cid = request.customer_id
        limit = await self.limit_of(cid)
        self._held[cid] += 1  # counted before asking Redis: the counts we publish never undercount
        taken = await self._take_slot(cid, limit)
        if not taken:
            self._held[cid] -= 1
            raise Refused(TRY_AGAIN_LATER, f"connection limit of the plan reached ({limit})")
        self._unclaimed[cid].append(time.monotonic())

    async def _take_slot(self, cid: str, limit: int) -> bool:
        if self._take is not None:
            try:
                answer = await asyncio.wait_for(
                    self._take(keys=[self._key(cid)], args=[self.node, limit, f"{self.prefix}node:"]), REDIS_TIMEOUT
                )
                return int(answer) >= 0
            except _redis_errors() as exc:
                log.warning("connection_limit_local_fallback", customer_id=cid, error=repr(exc))
        return self._held[cid] <= limit  # this node alone (already counts the one asking)

    async def connect(self, room: Room, connection: Connection) -> None:
        pending = self._unclaimed.get(connection.customer_id)
        if pending:
            pending.popleft()
            self._claimed.add(connection)

    async def disconnect(self, room: Room, connection: Connection) -> None:
        if connection in self._claimed:
            self._claimed.discard(connection)
        else:  # left before its connect hook ran
            pending = self._unclaimed.get(connection.customer_id)
            if not pending:
                return
            pending.popleft()
        await self._release(connection.customer_id)

    async def _release(self, cid: str) -> None:
        self._held[cid] = max(0, self._held[cid] - 1)
        if self._held[cid] == 0:
            del self._held[cid]
        if self._give is not None:
            try:
                await asyncio.wait_for(self._give(keys=[self._key(cid)], args=[self.node]), REDIS_TIMEOUT)
            except _redis_errors():
                pass  # the next heartbeat rewrites this node's count

    async def reconcile(self) -> None:
        """Give back slots whose connection never joined (its room failed to load), forget expired
        cached limits, and rewrite this node's counts in Redis (repairs drift and a Redis restart)."""
        now = time.monotonic()
        for cid, pending in list(self._unclaimed.items()):
            while pending and now - pending[0] > UNCLAIMED_AFTER:
                pending.popleft()
                await self._release(cid)
            if not pending:
                del self._unclaimed[cid]
        self.runtime.plan_limits.drop_expired()  # customers that stopped connecting
        if self.redis is None:
            return
        pipe = self.redis.pipeline(transaction=False)
        for cid, held in list(self._held.items()):
            pipe.hset(self._key(cid), self.node, held)
            pipe.expire(self._key(cid), COUNTS_TTL)
        if len(pipe):
            await asyncio.wait_for(pipe.execute(), REDIS_TIMEOUT * 2)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile()
            except _redis_errors() as exc:
                log.info("connection_counts_not_published", error=repr(exc))

    async def stop(self) -> None:
        if self.redis is not None and self._held:
            try:
                pipe = self.redis.pipeline(transaction=False)
                for cid in self._held:
                    pipe.hdel(self._key(cid), self.node)
                await asyncio.wait_for(pipe.execute(), REDIS_TIMEOUT)
            except _redis_errors():
                pass


class _Recent:
    """One credential's counted requests of the last window, in time slots: [slot, count, ms of
    the slot's latest request], oldest first."""

    __slots__ = ("slots", "total")

    def __init__(self) -> None:
        self.slots: deque[list[int]] = deque()
        self.total = 0


class RateLimit:
    """At most `per_minute` counted requests per credential in ANY `window` seconds (a sliding
    window, not clock minutes: fixed windows let 2x the limit through around a boundary, measured
    7,000 answered in 19 s against 6,000/minute). `hit` returns None (counted) or the seconds to
    wait until a request would be counted again (Retry-After).

    The window is kept as SLOTS counts, each with the time of its latest request, so memory per
    credential is bounded (at most SLOTS + 1 slots) and the answer is exact, never generous: a slot
    counts in full as long as its latest request is inside the window, and leaves once it is not.
    Refused requests are not counted (a client that keeps knocking gets in once it waited).

    The same rule runs as one Lua script in Redis (on Redis's clock, shared by every node: _HIT)
    and in memory without Redis or while it is unreachable (this node's monotonic clock). The
    memory copy keeps credentials in least-recently-used order and drops those silent for a
    window, and past `max_local` the least recent ones, so junk bearer strings cannot grow it.
    """

    def __init__(
        self, per_minute: int, prefix: str, redis=None, *, window: float = WINDOW, max_local: int = 100_000
    ) -> None:
        self.per_minute = per_minute
        self.prefix = prefix
        self.redis = redis
        self.window_ms = int(window * 1000)
        self.slot_ms = max(1, self.window_ms // SLOTS)
        self.max_local = max_local
        self._local: OrderedDict[str, _Recent] = OrderedDict()
        self._hit = redis.register_script(_HIT) if redis is not None else None

    async def hit(self, who: str) -> int | None:
        if self._hit is not None:
            try:
                wait_ms = await asyncio.wait_for(
                    self._hit(keys=[f"{self.prefix}rate:{who}"], args=[self.per_minute, self.window_ms, self.slot_ms]),
                    REDIS_TIMEOUT,
                )
                return _seconds(int(wait_ms)) if int(wait_ms) > 0 else None
            except _redis_errors() as exc:
                log.warning("rate_limit_local_fallback", error=repr(exc))
        return self.hit_local(who, int(time.monotonic() * 1000))

    def hit_local(self, who: str, now: int) -> int | None:
        """`hit` counted in this node's memory at `now` (ms of a monotonic clock)."""
        local = self._local
        recent = local.get(who)
        if recent is None:
            self._forget_silent(now)
            recent = local[who] = _Recent()
        else:
            local.move_to_end(who)
        slots = recent.slots
        cutoff = now - self.window_ms
        while slots and slots[0][2] <= cutoff:
            recent.total -= slots.popleft()[1]
        if recent.total >= self.per_minute:
            left = recent.total
            for slot in slots:  # oldest first: after it leaves the window, is there room?
                left -= slot[1]
                if left < self.per_minute:
                    return _seconds(slot[2] + self.window_ms - now)
        number = now // self.slot_ms
        if slots and slots[-1][0] == number:
            slots[-1][1] += 1
            slots[-1][2] = now
        else:
            slots.append([number, 1, now])
        recent.total += 1
        return None

    def _forget_silent(self, now: int) -> None:
        """Before a new credential is added: drop those with nothing left in the window (least
        recently used first, stopping at the first that has something), and the least recent ones
        while there is no room for one more."""
        local = self._local
        cutoff = now - self.window_ms
        while local:
            recent = next(iter(local.values()))
            if recent.slots and recent.slots[-1][2] > cutoff and len(local) < self.max_local:
                break
            local.popitem(last=False)

    @property
    def local_credentials(self) -> int:
        return len(self._local)


def _seconds(ms: int) -> int:
    return max(1, math.ceil(ms / 1000))


def credential_of(authorization: str | None, remote_addr: str | None) -> str:
    """Who a REST request counts against: its bearer credential (hashed), else its address."""
    scheme, _, raw = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and raw.strip():
        return "cred:" + hashlib.sha256(raw.strip().encode()).hexdigest()[:24]
    return f"addr:{remote_addr or 'unknown'}"


def install(runtime, redis=None, node: str = "") -> ConnectionLimit | None:
    """Connection limits as a room hook (when enforced) and the REST rate limit on runtime.rate_limit."""
    settings = runtime.settings
    runtime.rate_limit = (
        RateLimit(settings.rest_rate_limit, settings.redis_prefix, redis) if settings.rest_rate_limit else None
    )
    if settings.connection_limits != "enforce":
        return None
    limit = ConnectionLimit(runtime, redis, node)
    runtime.rooms.hooks.add(limit)
    runtime.connection_limit = limit  # its counts: api.billing.usage_of (the usage bars)

    async def start() -> None:
        runtime.spawn(limit.run(settings.node_heartbeat_seconds), "connection-counts")

    runtime.on_start(start)
    runtime.on_stop(limit.stop)
    return limit
