"""Webhook endpoints: their secrets, what their `events` filter may say, and the test message."""

from __future__ import annotations

import base64
import datetime as dt
import re
import secrets
import uuid

from sync_server.domain.webhooks.outbox import Message

MAX_ENDPOINTS = 50  # per customer
SECRET_BYTES = 32
# An events filter entry: "*", a type ("geofence.entered"), or a prefix pattern ("geofence.*").
FILTER_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?)$")
# The types event sources publish today (more may come; a filter is not limited to these).
EVENT_TYPES = (
    "geofence.entered",
    "geofence.exited",
    "overspeed.started",
    "trip.started",
    "trip.ended",
    "stop.started",
    "stop.ended",
    "device.offline",
    "device.online",
    "quota.reached",
    "document.updated",
    "webhook.test",
)
TEST_TYPE = "webhook.test"


def generate_secret() -> str:
    """A Standard Webhooks signing secret: whsec_ + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def test_message(endpoint_id: uuid.UUID) -> Message:
    """What POST /api/v1/webhooks/{id}/test sends (to that endpoint only, whatever its events)."""
    return Message(
        TEST_TYPE,
        {"endpoint_id": str(endpoint_id), "message": "a test delivery from webhost-sync"},
        dt.datetime.now(dt.UTC),
    )
