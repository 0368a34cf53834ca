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

import hmac
import uuid
from dataclasses import dataclass

from storage import tenants
from storage import vehicles as vehicle_store
from storage.registry import DatabaseRegistry
from sync_server.domain.fleet import device_secrets


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


async def authenticate(
    registry: DatabaseRegistry, identifier: str, secret: str | None, customer_slug: str | None = None
) -> Device:
    if not secret:
        raise DeviceRejected(401, "device_key_required", "device key required (key=... or Authorization: Bearer)")
    if customer_slug is None:
        row = await tenants.find_device(registry.shared, device_secrets.digest(secret))
        if row is None or not hmac.compare_digest(row["vehicle_identifier"].encode(), identifier.encode()):
            raise UNKNOWN
        if row["customer_status"] != "active":
            raise SUSPENDED
        return Device(str(row["customer_id"]), row["vehicle_id"])
    customer = await tenants.find_by_slug(registry.shared, customer_slug)
    if customer is None:
        raise UNKNOWN
    db = await registry.for_customer(customer["id"])
    async with db.tenant(customer["id"]) as conn:
        vehicle = await vehicle_store.tracker(conn, customer["id"], identifier=identifier)
    if vehicle is None or not device_secrets.matches(vehicle["device_secret_hash"], secret):
        raise UNKNOWN
    if customer["status"] != "active":
        raise SUSPENDED
    return Device(str(customer["id"]), vehicle["id"])
