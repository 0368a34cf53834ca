"""A tenant migration's write pause on every node of the cluster (with Redis).

The node running a migration holds the customer's writes itself (`on_this_node`: its sync rooms flush
and buffer, `runtime.rooms.paused`, and its registry lookups for the customer wait,
`registry.held`). A second node serving the same customer would otherwise keep writing to the source
database until its route reloads, after the final catch-up, and such a write would be missing from
the new database. So with Redis the migrating node asks every live node (the heartbeat keys of
sync_server/extensions/fanout.py) to hold the customer's writes the same way, and goes on only once each one
confirmed:

    migrating node                                 every other node (route_changes.listen)
    PUBLISH {prefix}pause {"op": "pause", id,
            customer, from, lease_ms}        ->    on_this_node(customer): flushed, now holding
                                             <-    RPUSH {prefix}pause:{id}:acks {"node", "ok"}
    BLPOP until every live node confirmed
    (CLUSTER_PAUSE_ACK_SECONDS, else fail:
    nothing is switched); final catch-up,
    verify, `check()` inside the switch
    transaction, commit the switch
    PUBLISH {"op": "end", id}                ->    reload the routes, then end the hold: the
                                                   held writes go to the database routed now

A failed migration sends the same `end`: the nodes reload the (unchanged) routes and write to the
source again. A node whose pause is never ended (the migrating node died, or the `end` was lost)
ends it itself after CLUSTER_PAUSE_LEASE_SECONDS and reloads its routes, so a crash never freezes a
customer. A lease starts when a node receives the request, which is after the migrating node sent
it; `check()` lets the switch commit only while less than the lease minus SWITCH_MARGIN has passed
since sending, so no node's lease can run out (and its held writes go to the source) between the
final catch-up and the switch. `check()` also fails the switch when a node that did not confirm is
live by then (it started during the pause).

Without Redis (or without fan-out) there is one node: only `on_this_node`. Not covered: a node cut
off from Redis long enough for its heartbeat to expire is not asked (it reloads its routes once its
subscription is back).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator

import structlog

log = structlog.get_logger("sync_server.domain.provisioning.cluster_pause")

SWITCH_MARGIN = 2.0  # seconds of a lease kept free for the switch's commit after `check()`
REDIS_TIMEOUT = 5.0  # one Redis command of a pause (a hung connection must not hang a migration)
ACKS_TTL_MS = 600_000  # an ack list outlives any pause, then disappears
RELOAD_ATTEMPTS = 10  # a node reloads its routes this often (0.5 s apart) before ending a hold anyway


class ClusterPauseError(RuntimeError):
    pass


def channel(rt) -> str:
    return f"{rt.settings.redis_prefix}pause"


def _acks_key(rt, pause_id: str) -> str:
    return f"{rt.settings.redis_prefix}pause:{pause_id}:acks"


def _fanout(rt):
    """The cross-node fan-out (it knows the live nodes), or None: a single node."""
    return getattr(rt, "fanout", None) if rt.redis is not None else None


@contextlib.asynccontextmanager
async def on_this_node(rt, customer_id) -> AsyncIterator[None]:
    """The customer's writes wait on this node while inside: sync rooms flush and buffer (when the
    sync core provides rooms.paused), and registry lookups for the customer wait. On exit the held
    writes go to the database the registry routes the customer to then."""
    try:
        rooms = rt.rooms
    except (AttributeError, RuntimeError):  # a runtime without the sync core (Runtime.rooms not wired)
        rooms = None
    room_pause = (
        rooms.paused(customer_id) if rooms is not None and hasattr(rooms, "paused") else contextlib.nullcontext()
    )
    async with room_pause:
        async with rt.registry.held(customer_id):
            yield


class Pause:
    """One migration's pause of the other nodes (the migrating node's side)."""

    def __init__(self, rt, customer_id) -> None:
        self.rt = rt
        self.customer_id = str(customer_id)
        self.id = secrets.token_hex(8)
        self.fanout = _fanout(rt)
        self.lease = rt.settings.cluster_pause_lease
        self.asked: set[str] = set()  # the other nodes live when the pause was asked
        self.confirmed: set[str] = set()
        self.asked_at = 0.0

    async def ask(self) -> None:
        """Ask every node to hold the customer's writes (no-op on a single node)."""
        if self.fanout is None:
            return
        self.asked = await self.fanout.live_nodes() - {self.fanout.node}
        self.asked_at = time.monotonic()
        await asyncio.wait_for(
            self.rt.redis.publish(
                channel(self.rt),
                json.dumps(
                    {
                        "op": "pause",
                        "id": self.id,
                        "customer": self.customer_id,
                        "from": self.fanout.node,
                        "lease_ms": int(self.lease * 1000),
                    }
                ),
            ),
            REDIS_TIMEOUT,
        )
        log.info("cluster_pause_asked", pause_id=self.id, customer_id=self.customer_id, nodes=sorted(self.asked))

    async def confirmed_by_all(self) -> None:
        """Wait until every asked node holds the customer's writes; raise past the ack timeout."""
        if self.fanout is None:
            return
        timeout = self.rt.settings.cluster_pause_ack
        deadline = self.asked_at + timeout
        key = _acks_key(self.rt, self.id)
        while not self.asked <= self.confirmed:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(self.asked - self.confirmed)
                raise ClusterPauseError(
                    f"nodes did not confirm the write pause within {timeout:g} s: {', '.join(missing)}"
                )
            try:
                got = await asyncio.wait_for(self.rt.redis.blpop([key], timeout=max(left, 0.01)), left + 1.0)
            except TimeoutError:
                continue
            if got is None:
                continue
            ack = json.loads(got[1])
            if not ack.get("ok"):
                raise ClusterPauseError(f"node {ack.get('node')} could not pause its writes: {ack.get('error')}")
            self.confirmed.add(str(ack.get("node")))
        log.info(
            "cluster_pause_confirmed",
            pause_id=self.id,
            customer_id=self.customer_id,
            nodes=sorted(self.confirmed),
            ms=round((time.monotonic() - self.asked_at) * 1000, 1),
        )

    async def check(self) -> None:
        """Right before the switch commits: raise unless every node that could write is holding
        and will still be holding when the commit is done (its lease has SWITCH_MARGIN left)."""
        if self.fanout is None:
            return
        joined = await self.fanout.live_nodes() - {self.fanout.node} - self.confirmed
        if joined:
            raise ClusterPauseError(
                f"nodes that do not hold the customer's writes are live: {', '.join(sorted(joined))}"
            )
        elapsed = time.monotonic() - self.asked_at
        if elapsed + SWITCH_MARGIN > self.lease:
            raise ClusterPauseError(
                f"the pause has lasted {elapsed:.1f} s: the nodes' lease ({self.lease:g} s) "
                f"could run out before the switch (less than {SWITCH_MARGIN:g} s left)"
            )

    async def end(self) -> None:
        """Tell the nodes to reload their routes and write again (best effort: a node that misses
        it ends its hold when its lease runs out)."""
        if self.fanout is None:
            return
        try:
            await asyncio.wait_for(
                self.rt.redis.publish(channel(self.rt), json.dumps({"op": "end", "id": self.id})), REDIS_TIMEOUT
            )
            await asyncio.wait_for(self.rt.redis.delete(_acks_key(self.rt, self.id)), REDIS_TIMEOUT)
        except Exception as exc:
            log.warning(
                "cluster_pause_end_failed",
                pause_id=self.id,
                customer_id=self.customer_id,
                error=str(exc) or type(exc).__name__,
            )


@contextlib.asynccontextmanager
async def everywhere(rt, customer_id) -> AsyncIterator[Pause]:
    """Hold the customer's writes on this node and on every other live node; yields the Pause,
    whose `check()` belongs inside the switch transaction, just before it commits."""
    pause = Pause(rt, customer_id)
    await pause.ask()
    try:
        async with on_this_node(rt, customer_id):  # flushes here while the others flush there
            await pause.confirmed_by_all()
            yield pause
    finally:
        await pause.end()


class Holds:
    """The pauses other nodes' migrations asked this node for (fed by route_changes.listen)."""

    def __init__(self, rt) -> None:
        self.rt = rt
        self._ended: dict[str, asyncio.Event] = {}  # pause id -> set once the migrating node ended it

    def on_message(self, data: bytes | str) -> None:
        try:
            msg = json.loads(data)
            op, pause_id = msg["op"], str(msg["id"])
            if op == "pause":
                customer_id, lease = str(msg["customer"]), float(msg["lease_ms"]) / 1000
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("cluster_pause_bad_message", error=str(exc) or type(exc).__name__)
            return
        if op == "end":
            ended = self._ended.get(pause_id)
            if ended is not None:
                ended.set()
            return
        fanout = _fanout(self.rt)
        if op != "pause" or fanout is None or msg.get("from") == fanout.node or pause_id in self._ended:
            return
        self._ended[pause_id] = asyncio.Event()
        self.rt.spawn(
            self._hold(pause_id, customer_id, time.monotonic() + lease, fanout.node), f"cluster_pause:{pause_id}"
        )

    async def _hold(self, pause_id: str, customer_id: str, lease_ends: float, node: str) -> None:
        ended = self._ended[pause_id]
        with structlog.contextvars.bound_contextvars(customer_id=customer_id, pause_id=pause_id):
            try:
                if ended.is_set():  # ended before we got to it (this node was stopped meanwhile)
                    log.info("cluster_pause_ended_before_holding")
                    return
                started = time.monotonic()
                async with on_this_node(self.rt, customer_id):
                    await self._ack(pause_id, {"node": node, "ok": True})
                    log.info("cluster_pause_holding", flush_ms=round((time.monotonic() - started) * 1000, 1))
                    try:
                        await asyncio.wait_for(ended.wait(), max(0.0, lease_ends - time.monotonic()))
                    except TimeoutError:
                        log.warning("cluster_pause_lease_expired")  # the migrating node is gone
                    await self._reload()
                log.info("cluster_pause_ended", held_ms=round((time.monotonic() - started) * 1000, 1))
            except Exception as exc:
                log.exception("cluster_pause_failed")
                await self._ack(pause_id, {"node": node, "ok": False, "error": str(exc) or type(exc).__name__})
            finally:
                self._ended.pop(pause_id, None)

    async def _reload(self) -> None:
        """Read the routes (the switch, if one was recorded) before the held writes go out; keep
        holding while the shared database does not answer, for a while."""
        for attempt in range(RELOAD_ATTEMPTS):
            try:
                await self.rt.registry.reload()
                return
            except Exception as exc:
                log.warning("cluster_pause_reload_failed", attempt=attempt + 1, error=str(exc) or type(exc).__name__)
                await asyncio.sleep(0.5)

    async def _ack(self, pause_id: str, ack: dict) -> None:
        try:
            pipe = self.rt.redis.pipeline(transaction=False)
            pipe.rpush(_acks_key(self.rt, pause_id), json.dumps(ack))
            pipe.pexpire(_acks_key(self.rt, pause_id), ACKS_TTL_MS)
            await asyncio.wait_for(pipe.execute(), REDIS_TIMEOUT)
        except Exception as exc:
            log.warning("cluster_pause_ack_failed", error=str(exc) or type(exc).__name__)
