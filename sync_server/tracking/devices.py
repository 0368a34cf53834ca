"""Which vehicle a tracker is: its `id` (the vehicle_identifier) plus its device secret.

Two ways to find the customer:
- `/ingest/osmand/{customer_slug}?id=...&key=SECRET`: the slug names the customer (works wherever
  the customer's data lives, dedicated databases included); the vehicle is looked up by identifier
  and the secret compared in constant time.
- `/ingest/osmand?id=...&key=SECRET`: the secret alone finds the vehicle (SECURITY DEFINER lookup on
  the shared database); `id` must then match its identifier.
The secret travels as `key` in the URL (Traccar Client can only be given a URL) or as
`Authorization: Bearer SECRET`. Every mismatch is the same 401 so nothing is learnt by guessing.
"""
from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass

from storage import tracked_fleet
from storage.registry import DatabaseRegistry


@dataclass(frozen=True)
class Device:
    customer_id: str
    vehicle_id: uuid.UUID


class DeviceRejected(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


UNKNOWN = DeviceRejected(401, "unknown_device", "unknown device id or wrong device key")
SUSPENDED = DeviceRejected(403, "customer_suspended", "customer account is suspended")


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def authenticate(registry: DatabaseRegistry, identifier: str, secret: str | None,
                       customer_slug: str | None = None) -> Device:
    if not secret:
        raise DeviceRejected(401, "device_key_required", "device key required (key=... or Authorization: Bearer)")
    hashed = digest(secret)
    if customer_slug is None:
        async with registry.shared.platform() as conn:
            row = await tracked_fleet.device_by_secret_hash(conn, hashed)
        if row is None or not hmac.compare_digest(row["vehicle_identifier"].encode(), identifier.encode()):
            raise UNKNOWN
        if row["customer_status"] != "active":
            raise SUSPENDED
        return Device(str(row["customer_id"]), row["vehicle_id"])
    async with registry.shared.platform() as conn:
        customer = await tracked_fleet.customer_by_slug(conn, customer_slug)
    if customer is None:
        raise UNKNOWN
    db = await registry.for_customer(customer["id"])
    async with db.tenant(customer["id"]) as conn:
        vehicle = await tracked_fleet.vehicle(conn, customer["id"], identifier=identifier)
    stored = bytes(vehicle["device_secret_hash"]) if vehicle and vehicle["device_secret_hash"] else b""
    if not hmac.compare_digest(stored, hashed):
        raise UNKNOWN
    if customer["status"] != "active":
        raise SUSPENDED
    return Device(str(customer["id"]), vehicle["id"])
