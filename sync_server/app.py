"""The composition root: builds the Runtime and the Quart app and wires every part together.
Imported only by the CLI and the tests."""
from __future__ import annotations

from quart import Quart

from api import (accounts, api_keys, billing, customers, docs, errors, fleet, health, ingest, json_provider, openapi,
                 rest_endpoint)
from api import provisioning as provisioning_api
from api import tracking as tracking_api

from . import fanout, provisioning, shared_limits, sync_endpoint, tracking
from .config import Settings
from .runtime import Runtime


def create_app(settings: Settings) -> Quart:
    app = Quart("webhost_sync")
    app.config["JSON_SORT_KEYS"] = False
    app.json = json_provider.JSONProvider(app)  # no NaN/Infinity in or out (JavaScript's JSON.parse refuses them)
    rt = Runtime(settings)
    app.extensions["webhost"] = rt

    errors.install(app)
    app.register_blueprint(health.blueprint)
    sync_endpoint.install(app, rt)  # websocket /sync/..., rooms on rt.rooms (add room hooks there)
    # Several nodes: cross-node fan-out and shared counters through Redis (in memory without it).
    relay = fanout.install(rt) if settings.redis_url else None
    shared_limits.install(rt, relay.redis if relay else None, relay.node if relay else "")
    app.register_blueprint(docs.blueprint)
    for area in (openapi, accounts, customers, api_keys, billing, fleet):  # REST: /api/v1/...
        app.register_blueprint(area.blueprint)
    app.register_blueprint(provisioning_api.blueprint)
    provisioning.install(rt)
    app.extensions["tracking"] = rt.tracking = tracking.install(rt)  # track docs + OsmAnd -> rows; room hooks on rt.rooms
    app.register_blueprint(tracking_api.blueprint)
    app.register_blueprint(ingest.blueprint)

    # /api/v1 operations served from ASGI (request ids, rate limit, error format for every route)
    rest_endpoint.install(app, rt)

    @app.before_serving
    async def _start() -> None:
        await rt.start()

    @app.after_serving
    async def _stop() -> None:
        await rt.stop()

    return app
