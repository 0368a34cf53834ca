"""Tracker ingestion over HTTP: the OsmAnd protocol (Traccar Client and many hardware trackers).

`/ingest/osmand/{customer_slug}` or `/ingest/osmand`, GET or POST, query/form parameters or the
Traccar Client JSON body; the device key as `key=` or `Authorization: Bearer` (sync_server/
tracking/devices.py says how the vehicle is found). Accepted fixes run through the same pipeline as
track documents. 200 answers `{"accepted": n, "rejected": {reason: n}}` (a filtered fix is not a
transport error: the tracker must not resend it); unreadable input is 422 with field paths.
"""

from __future__ import annotations

import io
import json
import time

from pydantic import Field
from quart import Blueprint
from werkzeug.formparser import FormDataParser

from api.current import runtime
from sync_server import logs
from sync_server.domain.tracking import Batch, devices, osmand

from . import calls
from .errors import ApiError
from .openapi import operation, validation_failed
from .schemas import ResponseModel

blueprint = Blueprint("ingest", __name__)

FORM = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "description": "OsmAnd parameters (id, lat, lon, timestamp, speed, bearing, altitude, accuracy, ...)",
}
TRACCAR_JSON = {"type": "object", "description": "the Traccar Client JSON body ({device_id, location} or a list)"}


class IngestResult(ResponseModel):
    accepted: int = Field(description="fixes stored")
    rejected: dict[str, int] = Field(description="fixes filtered out, per reason (not to be resent)")


def _unreadable(errors: list[tuple[str, str]], location: str) -> ApiError:
    return validation_failed(
        [{"location": location, "field": f, "message": m, "type": "value_error"} for f, m in errors],
        "tracker request cannot be read",
    )


def _device_key(call: calls.Call, params) -> str | None:
    header = call.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return params.get("key") or None


def _form(call: calls.Call, raw_body: bytes) -> dict[str, str]:
    """The form fields of a urlencoded or multipart body (the first of repeated ones), as Quart's
    request.form read them; other media types hold none."""
    mimetype, _, rest = call.headers.get("content-type", "").partition(";")
    options = dict(part.strip().split("=", 1) for part in rest.split(";") if "=" in part)
    options = {k.lower(): v.strip('"') for k, v in options.items()}
    _, form, _ = FormDataParser().parse(io.BytesIO(raw_body), mimetype.strip().lower(), len(raw_body), options)
    return form.to_dict()


@blueprint.route("/ingest/osmand", methods=["GET", "POST"])
@blueprint.route("/ingest/osmand/<customer_slug>", methods=["GET", "POST"])
@operation(
    "Tracker positions, OsmAnd protocol (Traccar Client and hardware trackers)",
    tags=["tracker ingest"],
    response=IngestResult,
    errors=(401, 403, 404),
    raw_body={"application/x-www-form-urlencoded": FORM, "application/json": TRACCAR_JSON},
    description="Query or form parameters, or the Traccar Client JSON body; the device key as `key=` "
    "or `Authorization: Bearer`. A filtered fix is counted in `rejected`, not refused.",
)
async def osmand_position(customer_slug: str | None = None):
    now_ms = int(time.time() * 1000)
    received = time.monotonic()  # the fixes arrived (pipeline lag: until their rows commit)
    call = calls.current()
    params = {key: values[0] for key, values in call.query().items()}
    raw_body = await call.body() if call.method == "POST" else b""
    try:
        if raw_body.lstrip().startswith((b"{", b"[")):
            try:
                body = json.loads(raw_body)
            except ValueError:
                raise ApiError(422, "invalid_json", "request body is not valid JSON") from None
            identifier, points = osmand.from_json(body, now_ms)
        else:
            if raw_body:
                params.update(_form(call, raw_body))
            identifier, points = osmand.from_params(params, now_ms)
    except osmand.OsmAndError as exc:
        raise _unreadable(exc.errors, "body" if raw_body.strip() else "query") from None
    try:
        device = await devices.authenticate(runtime().registry, identifier, _device_key(call, params), customer_slug)
    except devices.DeviceRejected as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    logs.bind(customer_id=device.customer_id)
    batch = Batch(device.customer_id, device.vehicle_id, points, source="osmand", received=received)
    outcome = await runtime().tracking.process(batch)
    return {"accepted": outcome.stored, "rejected": outcome.rejected}
