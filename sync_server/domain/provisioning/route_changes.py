"""Route changes reach every node. When a tenant migration switches a customer's database, the node
that ran it publishes the customer id on Redis (channel `{REDIS_PREFIX}routes`); every node with
REDIS_URL set reloads its registry's routing table from the shared database (the deployments rows
are the truth; the message only says "look again"). Pub/sub drops messages while a node is cut off
from Redis, so a node reloads each time its subscription is (re)established as well. The same
subscription carries the write pauses of tenant migrations (`{REDIS_PREFIX}pause`, see
cluster_pause.py), and the domain events every node must hear (`{REDIS_PREFIX}events`: suspensions,
revoked keys, deleted vehicles, changed credentials and plans; Runtime.publish sends them). Without
REDIS_URL there is one node and nothing to tell."""

from __future__ import annotations

import asyncio

import structlog

from sync_server.domain.provisioning import cluster_pause

log = structlog.get_logger("sync_server.domain.provisioning.routes")

MAX_BACKOFF = 5.0


def channel(rt) -> str:
    return f"{rt.settings.redis_prefix}routes"


async def announce(rt, customer_id) -> None:
    """Tell the other nodes that this customer's route changed (best effort: a node that misses it
    reloads when it next (re)subscribes)."""
    if rt.redis is None:
        return
    try:
        await rt.redis.publish(channel(rt), str(customer_id))
    except Exception as exc:
        log.warning("route_announce_failed", customer_id=str(customer_id), error=str(exc) or type(exc).__name__)


async def listen(rt, holds=None) -> None:
    """Reload the registry on every announced change; runs until shutdown. With `holds`
    (cluster_pause.Holds) the same subscription carries the write pauses of other nodes' tenant
    migrations, which are answered from there."""
    backoff = 0.2
    pauses = cluster_pause.channel(rt)
    events = rt.events_channel
    channels = [channel(rt), events, *([pauses] if holds is not None else [])]
    lost = False  # set once subscribed: a later subscription follows a loss
    while True:
        pubsub = rt.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*channels)
            await rt.registry.reload()  # whatever changed while we were not listening
            if lost:  # events published meanwhile are gone: open sockets check their credentials again
                await rt.publish("control_resubscribed")
            lost = True
            backoff = 0.2
            while True:
                message = await pubsub.get_message(timeout=5.0)
                if message is None or message.get("type") != "message":
                    continue
                name = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
                if name == pauses:
                    holds.on_message(message["data"])
                    continue
                if name == events:
                    await rt.receive_cluster_event(message["data"])
                    continue
                customer_id = message["data"].decode() if isinstance(message["data"], bytes) else message["data"]
                await rt.registry.reload()
                log.info("route_reloaded", customer_id=customer_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("route_listener_reconnecting", error=str(exc) or type(exc).__name__, backoff=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            try:
                await pubsub.aclose()
            except Exception:
                pass
