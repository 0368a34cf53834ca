"""Tracker ingestion over HTTP: the OsmAnd protocol (Traccar Client and many hardware trackers).

`/ingest/osmand/{customer_slug}` or `/ingest/osmand`, GET or POST, query/form parameters or the
Traccar Client JSON body; the device key as `key=` or `Authorization: Bearer` (sync_server/
tracking/devices.py says how the vehicle is found). Accepted fixes run through the same pipeline as
track documents. 200 answers `{"accepted": n, "rejected": {reason: n}}` for every request that
could be read and whose device is known, whatever became of its positions (no fix, `valid=false`,
duplicate, too old, over quota...): Traccar Client resends, first in its queue, every position not
answered 2xx, so any other answer would stick the phone's queue. Only an unknown device (401/403/404)
and unreadable input (422 with field paths) are refused. A body is read as the Traccar Client JSON
when it starts with `{` or `[`, else as form fields whatever its Content-Type (Traccar does the same).
"""

from __future__ import annotations

import io
import json
import time
from urllib.parse import parse_qsl

import structlog
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
log = structlog.get_logger("api.ingest")

FORM = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "description": "OsmAnd parameters (id, lat, lon, timestamp, speed, bearing, altitude, accuracy, ...)",
}
TRACCAR_JSON = {"type": "object", "description": "the Traccar Client JSON body ({device_id, location} or a list)"}


class IngestResult(ResponseModel):
    accepted: int = Field(description="fixes stored")
    rejected: dict[str, int] = Field(
        description="positions not stored, per reason (no_fix, invalid, duplicate, too_old, quota_exceeded, "
        "...): answered 200 all the same, so the tracker does not resend them"
    )


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


MAX_FORM_FIELDS = 200  # an OsmAnd request has about 15


def _form(call: calls.Call, raw_body: bytes) -> dict[str, str]:
    """The form fields of a body (the first of repeated ones): multipart as Quart's request.form
    reads it, anything else as `application/x-www-form-urlencoded` whatever its Content-Type (trackers
    send `text/plain` or none at all)."""
    mimetype, _, rest = call.headers.get("content-type", "").partition(";")
    mimetype = mimetype.strip().lower()
    if mimetype == "multipart/form-data":
        options = dict(part.strip().split("=", 1) for part in rest.split(";") if "=" in part)
        options = {k.lower(): v.strip('"') for k, v in options.items()}
        _, parsed, _ = FormDataParser().parse(io.BytesIO(raw_body), mimetype, len(raw_body), options)
        return parsed.to_dict()
    text = raw_body.decode("utf-8", errors="replace").strip()
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise _unreadable([("body", f"more than {MAX_FORM_FIELDS} form fields")], "body") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


@blueprint.route("/ingest/osmand", methods=["GET", "POST"])
@blueprint.route("/ingest/osmand/<customer_slug>", methods=["GET", "POST"])
@operation(
    "Tracker positions, OsmAnd protocol (Traccar Client and hardware trackers)",
    tags=["tracker ingest"],
    response=IngestResult,
    errors=(401, 403, 404),
    raw_body={"application/x-www-form-urlencoded": FORM, "application/json": TRACCAR_JSON},
    description="Query or form parameters, or the Traccar Client JSON body; the device key as `key=` "
    "or `Authorization: Bearer`. Every readable request of a known device is answered 200: a position that "
    "was not stored (no fix, `valid=false`, duplicate, too old, over quota, ...) is counted in `rejected`, not "
    "refused, so Traccar Client's queue never sticks. Form bodies are read whatever their Content-Type.",
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
            decoded = osmand.from_json(body, now_ms)
        else:
            if raw_body.strip():
                params.update(_form(call, raw_body))
            decoded = osmand.from_params(params, now_ms)
    except osmand.OsmAndError as exc:
        raise _unreadable(exc.errors, "body" if raw_body.strip() else "query") from None
    try:
        device = await devices.authenticate(
            runtime().registry, decoded.device, _device_key(call, params), customer_slug
        )
    except devices.DeviceRejected as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    logs.bind(customer_id=device.customer_id)
    rejected = dict(decoded.rejected)
    accepted = 0
    if decoded.points:
        batch = Batch(device.customer_id, device.vehicle_id, decoded.points, source="osmand", received=received)
        outcome = await runtime().tracking.process(batch)
        accepted = outcome.stored
        for reason, n in outcome.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + n
    if decoded.rejected:
        log.info("osmand_positions_rejected", vehicle_id=str(device.vehicle_id), rejected=decoded.rejected)
        if runtime().metrics is not None:  # rejected before the pipeline: counted with its rejections
            runtime().metrics.count_rejected(decoded.rejected)
    return {"accepted": accepted, "rejected": rejected}
