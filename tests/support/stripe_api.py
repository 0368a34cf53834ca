"""A local HTTP server playing the part of Stripe's API (the few endpoints the server calls), in the
test process (asyncio + h11), and Stripe's webhook signing.

It speaks Stripe's wire format (form-encoded bodies with bracketed keys, JSON answers, Stripe's
error object) and keeps Stripe's idempotency rule: a POST repeating an Idempotency-Key gets the
first answer replayed (and 400 idempotency_error if its parameters differ). Every request is
recorded. Faults, each for the next matching request(s):
- "500": answered 500 before anything is done (an edge error; nothing stored for the key);
- "drop": the request is carried out and stored for its key, then the connection is closed with
  no answer (the answer is lost: the client's retry must be replayed, not done twice);
- `down = True`: every request is answered 503 until it is set back.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import h11

from .h11_server import H11Server, Reply


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header of `payload` as Stripe makes it: t=<unix>,v1=<hex HMAC-SHA256
    of "<t>.<payload>" keyed with the endpoint's signing secret>."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(event_id: str, event_type: str, obj: dict, created: int) -> bytes:
    """A Stripe event body (as Stripe serialises it: the object under data.object)."""
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": created,
            "type": event_type,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "data": {"object": obj},
        }
    ).encode()


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass
class FakeStripe(H11Server):
    requests: list[Recorded] = field(default_factory=list)
    customers: dict[str, dict] = field(default_factory=dict)
    subscriptions: dict[str, dict] = field(default_factory=dict)
    faults: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path prefix, "500" | "drop")
    down: bool = False
    search_lag: bool = False  # Stripe's search index lags ~1 min behind writes: nothing found yet
    _replies: dict[str, tuple[dict, int, bytes]] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self, method: str, prefix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    def fail(self, method: str, prefix: str, mode: str, times: int = 1) -> None:
        self.faults.extend([(method, prefix, mode)] * times)

    # --- HTTP ----------------------------------------------------------------------------------

    async def handle(self, request: h11.Request, body: bytes) -> Reply | None:
        answer = self._answer(request, body)
        if answer is None:  # "drop": done, but no answer
            return None
        status, payload = answer
        return Reply(status, payload, [("content-type", "application/json"), ("content-length", str(len(payload)))])

    def _answer(self, request: h11.Request, body: bytes) -> tuple[int, bytes] | None:
        method = request.method.decode()
        url = urlsplit(request.target.decode())
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        params = dict(parse_qsl(body.decode() if method == "POST" else url.query, keep_blank_values=True))
        self.requests.append(Recorded(method, url.path, params, headers))
        if self.down:
            return 503, _error("api_error", "Stripe is down (test)")
        if not headers.get("authorization", "").startswith("Bearer sk_test_"):
            return 401, _error("invalid_request_error", "Invalid API Key provided")
        fault = next((f for f in self.faults if f[0] == method and url.path.startswith(f[1])), None)
        if fault is not None:
            self.faults.remove(fault)
            if fault[2] == "500":
                return 500, _error("api_error", "An unknown error occurred (test)")
        key = headers.get("idempotency-key")
        if method == "POST" and key and key in self._replies:
            first_params, status, payload = self._replies[key]
            if first_params != params:
                return 400, _error(
                    "idempotency_error", "Keys for idempotent requests can only be used with the same parameters"
                )
            return None if fault is not None and fault[2] == "drop" else (status, payload)
        status, obj = self._route(method, url.path, params)
        payload = json.dumps(obj).encode()
        if method == "POST" and key:
            self._replies[key] = (params, status, payload)
        if fault is not None and fault[2] == "drop":
            return None
        return status, payload

    # --- the API -------------------------------------------------------------------------------

    def _route(self, method: str, path: str, params: dict[str, str]) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        if parts[:2] == ["v1", "customers"] and method == "POST" and len(parts) == 2:
            cid = f"cus_test{next(self._ids)}"
            self.customers[cid] = {
                "id": cid,
                "object": "customer",
                "name": params.get("name"),
                "email": params.get("email"),
                "metadata": _sub_keys(params, "metadata"),
                "created": int(time.time()),
            }
            return 200, self.customers[cid]
        if parts[:2] == ["v1", "customers"] and method == "POST" and len(parts) == 3:
            found_customer = self.customers.get(parts[2])
            if found_customer is None:
                return 404, _error("invalid_request_error", "No such customer", code="resource_missing")
            found_customer.update({k: params[k] or None for k in ("name", "email") if k in params})
            return 200, found_customer
        if parts == ["v1", "customers", "search"] and method == "GET":
            wanted = params.get("query", "").rsplit(":", 1)[-1].strip("'")
            found = [c for c in self.customers.values() if c["metadata"].get("webhost_customer_id") == wanted]
            found = [] if self.search_lag else found
            return 200, {"object": "search_result", "data": found, "has_more": False, "url": "/v1/customers/search"}
        if parts[:2] == ["v1", "subscriptions"]:
            if len(parts) == 2 and method == "POST":
                return self._create_subscription(params)
            if len(parts) == 2 and method == "GET":
                found = [s for s in self.subscriptions.values() if s["customer"] == params.get("customer")]
                found = [s for s in found if s["status"] != "canceled"]  # Stripe's default filter
                return 200, {"object": "list", "data": found, "has_more": False, "url": "/v1/subscriptions"}
            sub = self.subscriptions.get(parts[2]) if len(parts) == 3 else None
            if sub is None:
                return 404, _error("invalid_request_error", "No such subscription", code="resource_missing")
            if method == "GET":
                return 200, sub
            if method == "DELETE":
                sub["status"] = "canceled"
                return 200, sub
            if method == "POST":
                if "cancel_at_period_end" in params:
                    sub["cancel_at_period_end"] = params["cancel_at_period_end"] == "true"
                if "items[0][price]" in params:
                    item = sub["items"]["data"][0]
                    assert params.get("items[0][id]") == item["id"], params
                    item["price"] = _price(params["items[0][price]"])
                sub["metadata"].update(_sub_keys(params, "metadata"))
                return 200, sub
        return 404, _error("invalid_request_error", f"Unrecognized request URL ({method}: {path})")

    def _create_subscription(self, params: dict[str, str]) -> tuple[int, dict]:
        if params.get("customer") not in self.customers:
            return 400, _error("invalid_request_error", "No such customer", code="resource_missing")
        n = next(self._ids)
        now = int(time.time())
        sid = f"sub_test{n}"
        self.subscriptions[sid] = {
            "id": sid,
            "object": "subscription",
            "customer": params["customer"],
            "status": "active",
            "created": now,
            "cancel_at_period_end": params.get("cancel_at_period_end") == "true",
            "collection_method": params.get("collection_method"),
            "metadata": _sub_keys(params, "metadata"),
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": f"si_test{n}",
                        "object": "subscription_item",
                        "price": _price(params["items[0][price]"]),
                        "current_period_start": now,
                        "current_period_end": now + 30 * 86400,
                    }
                ],
            },
        }
        return 200, self.subscriptions[sid]


def _price(price_id: str) -> dict:
    return {"id": price_id, "object": "price"}


def _sub_keys(params: dict[str, str], prefix: str) -> dict[str, str]:
    return {k[len(prefix) + 1 : -1]: v for k, v in params.items() if k.startswith(prefix + "[") and k.endswith("]")}


def _error(kind: str, message: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"type": kind, "message": message, **({"code": code} if code else {})}}).encode()
