"""What an unexpected failure in a handler answers, on both HTTP paths (api.rest_endpoint for
@operation routes, Quart for the others), served by a real Hypercorn: the JSON error format with
500 `internal_error`, the request id, no stack trace; logged with the request id; the connection
and the server keep serving. Before, a BaseException (such as pyo3's PanicException, raised by a
Rust panic inside pycrdt) answered an empty non-JSON 500 and cancelled the connection's other tasks,
and a value Quart could not write as JSON answered `internal_server_error`.

The failures are injected into the real handlers' collaborators (monkeypatch): nothing the API
accepts reaches them on purpose any more."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config

from storage import vehicles as vehicle_store
from sync_server.domain.documents import doc_content
from sync_server.node.app import create_app

from ..support import sync_peers
from ..support.server import free_port
from .conftest import app_settings


class RustPanic(BaseException):
    """Stands for pyo3_runtime.PanicException: a BaseException, not an Exception."""


def _raise(exc: BaseException):
    def fail(*_args, **_kwargs):
        raise exc

    return fail


def _unwritable(*_args, **_kwargs):
    return {"value": object()}  # the view's answer cannot be written as JSON


@pytest.fixture
async def served(database_url):
    app = create_app(app_settings(database_url))
    config = Config()
    port = free_port()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(app, config, shutdown_trigger=stop.wait))
    base_url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as probe:
        for _ in range(200):
            try:
                if (await probe.get("/healthz")).status_code == 200:
                    break
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
    customer = await sync_peers.create_customer(database_url)
    key = await sync_peers.create_api_key(database_url, customer, ["admin"])
    yield base_url, {"Authorization": f"Bearer {key}"}
    stop.set()
    await task


@pytest.mark.parametrize(
    "target, path, failure",
    [
        (vehicle_store, "list_page", _raise(RuntimeError("boom: secret detail"))),
        (vehicle_store, "list_page", _raise(RustPanic("boom: secret detail"))),
        (doc_content, "to_json", _raise(RuntimeError("boom: secret detail"))),
        (doc_content, "to_json", _raise(RustPanic("boom: secret detail"))),
        (doc_content, "to_json", _unwritable),
    ],
    ids=[
        "operation-exception",
        "operation-base-exception",
        "quart-exception",
        "quart-base-exception",
        "quart-unwritable-answer",
    ],
)
async def test_an_unexpected_failure_is_a_json_500_and_nothing_else_breaks(
    served, monkeypatch, capsys, target, path, failure
):
    base_url, auth = served
    url = "/api/v1/vehicles" if target is vehicle_store else "/api/v1/docs/fleet?format=json"
    async with httpx.AsyncClient(base_url=base_url, timeout=10, headers=auth) as http:
        assert (await http.get(url)).status_code == 200  # served before the failure
        monkeypatch.setattr(target, path, failure)
        r = await http.get(url, headers={"X-Request-ID": "req-unexpected-1"})
        assert r.status_code == 500
        assert r.headers["content-type"] == "application/json"
        assert r.headers["X-Request-ID"] == "req-unexpected-1"
        assert json.loads(r.text) == {
            "error": {"code": "internal_error", "message": "internal server error", "details": {}}
        }
        monkeypatch.undo()
        # The same keep-alive connection, and the server, keep serving.
        assert (await http.get(url)).status_code == 200
        assert (await http.get("/healthz")).status_code == 200
    logged = capsys.readouterr()
    lines = [line for line in (logged.out + logged.err).splitlines() if "unhandled_error" in line]
    assert len(lines) == 1 and "req-unexpected-1" in lines[0], lines  # logged once, with the request id
