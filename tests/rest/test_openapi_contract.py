"""The served OpenAPI document matches what the real server does: schemathesis (examples,
coverage and fuzzing phases, bounded) finds no 5xx, no undocumented status, no response that
breaks its schema, and no schema-violating request accepted."""

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from .conftest import OPERATOR_PASSWORD, bearer
from .test_fleet import _create_operator

# Operations never fuzzed: logout would end the operator session the run itself uses.
NOT_FUZZED = {"post_api_v1_auth_logout"}


def operations_by_credential(doc: dict) -> tuple[set[str], set[str]]:
    """Every operation of the document, by the credential it is fuzzed with: the customer API key
    for apiKey operations, appSession and operatorSession-only ones (sent without the cookie) and those without security
    (health, ingest, login, public plans, the web app's files), the
    operator token for operatorToken operations (both for operations that take either)."""
    customer, operator = set(), set()
    for item in doc["paths"].values():
        for op in item.values():
            schemes = {name for requirement in op.get("security") or [{}] for name in requirement}
            cookie_only = schemes == {"operatorSession"}  # the console's session routes: 401 without the cookie
            if not schemes or schemes & {"apiKey", "appSession"} or cookie_only:  # cookie routes: 401 without it
                customer.add(op["operationId"])
            if "operatorToken" in schemes:
                operator.add(op["operationId"])
    return customer - NOT_FUZZED, operator - NOT_FUZZED


# Per-operation exceptions, each with its reason (schemathesis reads schemathesis.toml from its cwd).
# A document name may contain "/" (tracks/{vehicle}/{day}), so /api/v1/docs/x/updates is also GET of
# the document "x/updates": the Allow header's GET is true, and OpenAPI cannot say so, so the
# coverage phase sends no OPTIONS there (every other unexpected method still is).
CONFIG = """
[[operations]]
include-path = "/api/v1/docs/{doc}/updates"
phases.coverage.unexpected-methods = ["PUT", "DELETE", "PATCH", "TRACE"]
"""


def schemathesis(base_url: str, token: str, operation_ids: set[str], cwd: Path) -> subprocess.CompletedProcess:
    """The README command, bounded for the test suite. positive_data_acceptance is left out: some
    rules cannot be written in JSON Schema (closed rings, future expiry, opaque cursors, plan limits)."""
    exe = Path(sys.executable).parent / "schemathesis"
    (cwd / "schemathesis.toml").write_text(CONFIG)
    cmd = [
        str(exe),
        "run",
        f"{base_url}/api/openapi.json",
        "-H",
        f"Authorization: Bearer {token}",
        "--include-operation-id-regex",
        "^(" + "|".join(re.escape(o) for o in sorted(operation_ids)) + ")$",
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
    ]
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"}
    )


def test_openapi_document_is_3_1_and_covers_every_route(server):
    doc = httpx.get(f"{server.base_url}/api/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert ("POST", "/api/v1/vehicles") in ops and ("POST", "/api/v1/sync-tokens") in ops
    # the served url map equals the document: test_every_served_route_is_in_the_document (no count
    # here: each branch that adds operations would have to edit it)
    assert ("DELETE", "/api/v1/customers/{customer_id}") in ops
    create = doc["paths"]["/api/v1/vehicles"]["post"]
    assert set(create["responses"]) == {"201", "401", "402", "403", "409", "422"}
    assert create["security"] == [{"apiKey": []}, {"appSession": []}]  # an API key or the app's session cookie
    assert doc["components"]["schemas"]["VehicleCreate"]["additionalProperties"] is False
    # operator routes: the bearer token or the console's cookie; the console's session routes: the cookie
    assert doc["paths"]["/api/v1/nodes"]["get"]["security"] == [{"operatorToken": []}, {"operatorSession": []}]
    assert doc["paths"]["/api/v1/operator/session"]["get"]["security"] == [{"operatorSession": []}]
    assert doc["components"]["securitySchemes"]["operatorSession"]["name"] == "whs_operator"


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

    doc = httpx.get(f"{server.base_url}/api/openapi.json").json()
    customer_ops, operator_ops = operations_by_credential(doc)
    every = {op["operationId"] for item in doc["paths"].values() for op in item.values()}
    assert customer_ops | operator_ops | NOT_FUZZED == every  # no operation left out
    assert len(customer_ops) > 30 and len(operator_ops) > 15

    customer_run = schemathesis(server.base_url, key, customer_ops, tmp_path)
    assert customer_run.returncode == 0, customer_run.stdout[-6000:] + customer_run.stderr[-2000:]
    operator_run = schemathesis(server.base_url, token, operator_ops, tmp_path)
    assert operator_run.returncode == 0, operator_run.stdout[-6000:] + operator_run.stderr[-2000:]
    for run, ops in ((customer_run, customer_ops), (operator_run, operator_ops)):
        assert " passed" in run.stdout and "Tested: " in run.stdout
        assert f"Selected: {len(ops)}/" in run.stdout or f"{len(ops)} selected" in run.stdout, run.stdout[:3000]
    assert '"unhandled_error"' not in server.log_text()
