"""The served OpenAPI document matches what the real server does: schemathesis (examples,
coverage and fuzzing phases, bounded) finds no 5xx, no undocumented status, no response that
breaks its schema, and no schema-violating request accepted."""

import os
import subprocess
import sys
from pathlib import Path

import httpx

from .conftest import OPERATOR_PASSWORD, bearer
from .test_fleet import _create_operator

CUSTOMER_TAGS = "^(vehicles|drivers|geofences|api keys|sync|billing|customer users|tracking)$"
OPERATOR_TAGS = r"^(customers \(operator\)|plans|operator auth)$"


def schemathesis(base_url: str, token: str, tags: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    """The README command, bounded for the test suite. positive_data_acceptance is left out: some
    rules cannot be written in JSON Schema (closed rings, future expiry, opaque cursors, plan limits)."""
    exe = Path(sys.executable).parent / "schemathesis"
    cmd = [
        str(exe),
        "run",
        f"{base_url}/api/openapi.json",
        "-H",
        f"Authorization: Bearer {token}",
        "--include-tag-regex",
        tags,
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "15",
        "--seed",
        "7",
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        *extra,
    ]
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"}
    )


def test_openapi_document_is_3_1_and_covers_every_route(server):
    doc = httpx.get(f"{server.base_url}/api/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert ("POST", "/api/v1/vehicles") in ops and ("POST", "/api/v1/sync-tokens") in ops
    # 45 + 5 tracking + 2 documents + 8 provisioning/deployments/migrations + 4 ingest + 2 health + 1 metrics
    # + webhooks and the dispatcher app's routes (merged since): 80
    assert ("DELETE", "/api/v1/customers/{customer_id}") in ops and len(ops) == 80
    create = doc["paths"]["/api/v1/vehicles"]["post"]
    assert set(create["responses"]) == {"201", "401", "402", "403", "409", "422"}
    assert create["security"] == [{"apiKey": []}, {"appSession": []}]  # an API key or the app's session cookie
    assert doc["components"]["schemas"]["VehicleCreate"]["additionalProperties"] is False


DOCUMENT_ITSELF = {("GET", "/api/openapi.json")}


def test_every_served_route_is_an_operation_in_the_document(server):
    """The route table the server answers from (the app's url map, which api.rest_endpoint matches
    against) equals the served document's paths and methods: a route added without `@operation`
    (so without validation, error format and documentation) fails here, and so does a documented
    route nobody serves."""
    from api import openapi, rest_endpoint
    from sync_server.config import Settings
    from sync_server.node.app import create_app

    app = create_app(Settings(database_url="postgresql://unused@127.0.0.1/unused", secret_key="k" * 40))
    served = {
        (method, openapi._openapi_path(rule.rule)[0])
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    doc = httpx.get(f"{server.base_url}/api/openapi.json").json()
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert served - DOCUMENT_ITSELF == documented
    assert {p for _, p in served if p.startswith("/api/v1/")} >= {
        "/api/v1/deployments",
        "/api/v1/customers/{customer_id}/migrations",
        "/api/v1/docs/{doc}",
    }
    # ... and every one of them is served by the one endpoint (not by Quart's dispatch)
    endpoint = rest_endpoint.RestEndpoint(app.asgi_app, app, runtime=None)
    by_endpoint = {rule.endpoint for rule in app.url_map.iter_rules()} - set(endpoint.views)
    assert by_endpoint == {"openapi.openapi_document"}


def test_schemathesis_finds_nothing(server, server_env, tmp_path):
    _create_operator(server_env, "ops@example.com")
    token = httpx.post(
        f"{server.base_url}/api/v1/auth/login", json={"email": "ops@example.com", "password": OPERATOR_PASSWORD}
    ).json()["token"]
    created = httpx.post(
        f"{server.base_url}/api/v1/customers", headers=bearer(token), json={"slug": "fuzz", "name": "Fuzz"}
    ).json()
    key = created["api_key"]["key"]

    customer_run = schemathesis(server.base_url, key, CUSTOMER_TAGS, tmp_path)
    assert customer_run.returncode == 0, customer_run.stdout[-6000:] + customer_run.stderr[-2000:]
    operator_run = schemathesis(
        server.base_url, token, OPERATOR_TAGS, tmp_path, "--exclude-path", "/api/v1/auth/logout"
    )
    assert operator_run.returncode == 0, operator_run.stdout[-6000:] + operator_run.stderr[-2000:]
    for run in (customer_run, operator_run):
        assert " passed" in run.stdout and "Tested: " in run.stdout
    assert '"unhandled_error"' not in server.log_text()
