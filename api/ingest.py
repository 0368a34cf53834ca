"""Tracker ingestion over HTTP: the OsmAnd protocol (Traccar Client and many hardware trackers).

`/ingest/osmand/{customer_slug}` or `/ingest/osmand`, GET or POST, query/form parameters or the
Traccar Client JSON body; the device key as `key=` or `Authorization: Bearer` (sync_server/
tracking/devices.py says how the vehicle is found). Accepted fixes run through the same pipeline as
track documents. 200 answers `{"accepted": n, "rejected": {reason: n}}` (a filtered fix is not a
transport error: the tracker must not resend it); unreadable input is 422 with field paths.
"""
from __future__ import annotations

import json
import time

from quart import Blueprint, current_app, request

from sync_server.domain.tracking import Batch, devices, osmand
from sync_server.node import logs
from sync_server.node.runtime import runtime

from .errors import ApiError
from .openapi import validation_failed

blueprint = Blueprint("ingest", __name__)


def _unreadable(errors: list[tuple[str, str]], location: str) -> ApiError:
    return validation_failed([{"location": location, "field": f, "message": m, "type": "value_error"}
                              for f, m in errors], "tracker request cannot be read")


def _device_key(params) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return params.get("key") or None


@blueprint.route("/ingest/osmand", methods=["GET", "POST"])
@blueprint.route("/ingest/osmand/<customer_slug>", methods=["GET", "POST"])
async def osmand_position(customer_slug: str | None = None):
    now_ms = int(time.time() * 1000)
    params = dict(request.args)
    raw_body = await request.get_data(as_text=False) if request.method == "POST" else b""
    try:
        if raw_body.lstrip().startswith((b"{", b"[")):
            try:
                body = json.loads(raw_body)
            except ValueError:
                raise ApiError(422, "invalid_json", "request body is not valid JSON") from None
            identifier, points = osmand.from_json(body, now_ms)
        else:
            if raw_body:
                params.update((await request.form).to_dict())
            identifier, points = osmand.from_params(params, now_ms)
    except osmand.OsmAndError as exc:
        raise _unreadable(exc.errors, "body" if raw_body.strip() else "query") from None
    try:
        device = await devices.authenticate(runtime().registry, identifier, _device_key(params), customer_slug)
    except devices.DeviceRejected as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    logs.bind(customer_id=device.customer_id)
    pipeline = current_app.extensions["tracking"]
    outcome = await pipeline.process(Batch(device.customer_id, device.vehicle_id, points, source="osmand"))
    return {"accepted": outcome.stored, "rejected": outcome.rejected}
