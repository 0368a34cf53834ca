"""The composition root: builds the Runtime and the Quart app and wires every part together.
Imported only by the CLI and the tests."""

from __future__ import annotations

import asyncio

import structlog
from quart import Quart

from api import (
    accounts,
    api_keys,
    app_sessions,
    billing,
    billing_provider,
    customers,
    docs,
    errors,
    fleet,
    health,
    ingest,
    json_provider,
    metrics,
    openapi,
    operator_sessions,
    rest_endpoint,
    webapp,
)
from api import provisioning as provisioning_api
from api import reports as reports_api
from api import tracking as tracking_api
from api import webhooks as webhooks_api
from storage.documents import UpdateLog
from sync_server.config import Settings
from sync_server.domain import provisioning, tracking, webhooks
from sync_server.domain.accounts.sync_access import SyncAccess
from sync_server.domain.billing import plans as billing_usage
from sync_server.domain.billing import stripe_sync
from sync_server.domain.runtime import Runtime
from sync_server.domain.webhooks.documents import DocumentAnnouncer
from sync_server.extensions import fanout, shared_limits
from sync_server.extensions import metrics as node_metrics
from sync_server.extensions.document_changes import DocumentChanges
from sync_server.extensions.persistence import Persistence
from sync_server.sync.endpoint import SyncEndpoint
from sync_server.sync.hooks import PERSISTENCE
from sync_server.sync.intake import FrameBudget
from sync_server.sync.refusals import Refusals
from sync_server.sync.rooms import RoomRegistry, warm_engine

log = structlog.get_logger("sync_server.node.app")


def create_app(settings: Settings) -> Quart:
    app = Quart("webhost_sync", static_folder=None)  # every route is an @operation (api.rest_endpoint)
    app.config["JSON_SORT_KEYS"] = False
    app.json = json_provider.JSONProvider(app)  # no NaN/Infinity in or out (JavaScript's JSON.parse refuses them)
    rt = Runtime(settings)
    app.extensions["webhost"] = rt

    errors.install(app)
    app.register_blueprint(health.blueprint)
    _serve_sync(app, rt)  # websocket /sync/..., rooms on rt.rooms (add room hooks there)
    # Several nodes: cross-node fan-out and shared counters through Redis (in memory without it).
    relay = fanout.install(rt) if settings.redis_url else None
    shared_limits.install(rt, relay.redis if relay else None, relay.node if relay else "")
    app.register_blueprint(docs.blueprint)
    for area in (
        openapi,
        accounts,
        app_sessions,
        operator_sessions,
        customers,
        api_keys,
        billing,
        fleet,
    ):  # REST: /api/v1/...
        app.register_blueprint(area.blueprint)
    app.register_blueprint(provisioning_api.blueprint)
    provisioning.install(rt)
    app.extensions["tracking"] = rt.tracking = tracking.install(
        rt
    )  # track docs + OsmAnd -> rows; room hooks on rt.rooms
    app.register_blueprint(tracking_api.blueprint)
    app.register_blueprint(reports_api.blueprint)
    app.register_blueprint(ingest.blueprint)
    app.register_blueprint(webhooks_api.blueprint)
    rt.webhooks = webhooks.install(rt)  # the delivery worker of this node
    app.register_blueprint(billing_provider.blueprint)  # the Stripe webhook, a customer's billing account
    rt.billing_provider = stripe_sync.install(rt)  # with STRIPE_SECRET_KEY: pushes to Stripe, policy timers
    _announce_document_changes(rt)  # document.updated webhooks, debounced per document
    app.register_blueprint(webapp.blueprint)  # the dispatcher web app at /app/ (static, built by `make js`)
    # GET /metrics: counted through the hooks and callbacks of the parts wired above
    measured = node_metrics.install(rt)
    app.register_blueprint(metrics.blueprint)

    # /api/v1 operations served from ASGI (request ids, rate limit, error format for every route)
    rest_endpoint.install(app, rt, measured.observe_request)

    @app.before_serving
    async def _start() -> None:
        await rt.start()

    @app.after_serving
    async def _stop() -> None:
        await rt.stop()

    return app


def _announce_document_changes(runtime: Runtime) -> None:
    interval = runtime.settings.webhook_document_interval
    assert runtime.rooms is not None and runtime.update_log is not None
    changes = DocumentChanges(DocumentAnnouncer(runtime.registry, interval), interval, flush=runtime.update_log.flush)
    runtime.rooms.hooks.add(changes)
    # after the rooms closed (drain) and before the update log stops (stop hooks run in reverse)
    runtime.on_stop(changes.drain)


def _serve_sync(app: Quart, runtime: Runtime) -> RoomRegistry:
    """The sync core: rooms on `runtime.rooms`, persistence as their first hook, the websocket
    endpoint in front of Quart, start/drain/stop in the runtime's order."""
    settings = runtime.settings
    rooms = RoomRegistry(evict_after=settings.room_evict_seconds, spawn=runtime.spawn)
    update_log = UpdateLog(runtime.registry, window=settings.sync_commit_window_ms / 1000)
    persistence = Persistence(
        runtime.registry,
        update_log,
        compact_after=settings.compact_after_updates,
        compact_after_bytes=settings.compact_after_bytes,
    )
    rooms.hooks.add(persistence, priority=PERSISTENCE)
    rooms.add_pauser(persistence.paused)
    runtime.rooms = rooms
    runtime.update_log = update_log

    async def start() -> None:
        update_log.start()
        runtime.spawn(sweep_idle(), "sync-idle-sweep")
        warm_engine()
        runtime.spawn(persistence.warm(), "warm-document-loads")

    async def drain() -> None:
        await rooms.drain()
        await endpoint.wait_closed(settings.shutdown_timeout)  # the lean transport's close handshakes

    async def stop() -> None:
        await update_log.stop(settings.shutdown_timeout)

    async def sweep_idle() -> None:
        # Dead peers (a phone that lost its network without a FIN) never send again; live
        # y-websocket clients renew their awareness every 15 s.
        interval = min(settings.sync_idle_timeout / 3, 10.0)
        while True:
            await asyncio.sleep(interval)
            closed = rooms.close_idle(settings.sync_idle_timeout)
            if closed:
                log.info("sync_idle_closed", connections=closed)
            await rooms.renew_server_awareness()  # the server's own state outlives peers' timeouts

    async def suspended(customer_id, **_ignored) -> None:
        await rooms.close_customer(str(customer_id))

    runtime.on_start(start)
    runtime.on_drain(drain)
    runtime.on_stop(stop)
    runtime.subscribe("customer_suspended", suspended)

    async def session_ended(customer_id, session_id, **_ignored) -> None:  # a dispatcher app signed out
        closed = rooms.close_session(str(customer_id), str(session_id))
        log.info("app_session_connections_closed", customer_id=str(customer_id), connections=closed)

    runtime.subscribe("app_session_ended", session_ended)
    access = SyncAccess(runtime.registry, runtime.secret_key, runtime.api_keys, runtime.admissions)
    endpoint = SyncEndpoint(
        app.asgi_app,
        rooms,
        access,
        max_message=settings.sync_max_message_bytes,
        queue_limit=settings.sync_send_queue_limit,
        queue_bytes=settings.sync_send_queue_bytes,
        budget=FrameBudget(settings.sync_frame_budget_bytes),
        refusals=Refusals(hold=settings.sync_refusal_hold, max_held=settings.sync_refusal_hold_max),
        on_too_big=lambda customer_id, doc, size: billing_usage.count_frame_too_big(runtime.registry, customer_id),
        lean=settings.sync_transport == "lean",
    )
    app.asgi_app = endpoint  # type: ignore[method-assign]  # Quart's documented way to wrap its ASGI app

    # Live sockets follow their credentials (on every node: these events cross the control channel).
    # The key cache forgot the key before this runs (Runtime subscribed it first).
    async def key_revoked(customer_id, **_ignored) -> None:
        await endpoint.credentials.revalidate(str(customer_id), "api_key")

    async def credentials_changed(customer_id, **_ignored) -> None:
        await endpoint.credentials.revalidate(str(customer_id))

    runtime.subscribe("api_key_revoked", key_revoked)
    runtime.subscribe("credentials_changed", credentials_changed)

    async def resubscribed(**_ignored) -> None:  # the control channel was lost: events may be missed
        await endpoint.credentials.revalidate_all()

    runtime.subscribe("control_resubscribed", resubscribed)
    return rooms
