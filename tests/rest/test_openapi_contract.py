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
    cmd = [str(exe), "run", f"{base_url}/api/openapi.json", "-H", f"Authorization: Bearer {token}",
           "--include-tag-regex", tags, "--checks", "all", "--exclude-checks", "positive_data_acceptance",
           "--phases", "examples,coverage,fuzzing", "--max-examples", "15", "--seed", "7", "--workers", "1",
           "--generation-database", "none", "--no-color", *extra]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})


def test_openapi_document_is_3_1_and_covers_every_route(server):
    doc = httpx.get(f"{server.base_url}/api/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert ("POST", "/api/v1/vehicles") in ops and ("POST", "/api/v1/sync-tokens") in ops
    assert ("DELETE", "/api/v1/customers/{customer_id}") in ops and len(ops) == 50  # 45 + 5 tracking
    create = doc["paths"]["/api/v1/vehicles"]["post"]
    assert set(create["responses"]) == {"201", "401", "402", "403", "409", "422"}
    assert create["security"] == [{"apiKey": []}]
    assert doc["components"]["schemas"]["VehicleCreate"]["additionalProperties"] is False


def test_schemathesis_finds_nothing(server, server_env, tmp_path):
    _create_operator(server_env, "ops@example.com")
    token = httpx.post(f"{server.base_url}/api/v1/auth/login",
                       json={"email": "ops@example.com", "password": OPERATOR_PASSWORD}).json()["token"]
    created = httpx.post(f"{server.base_url}/api/v1/customers", headers=bearer(token),
                         json={"slug": "fuzz", "name": "Fuzz"}).json()
    key = created["api_key"]["key"]

    customer_run = schemathesis(server.base_url, key, CUSTOMER_TAGS, tmp_path)
    assert customer_run.returncode == 0, customer_run.stdout[-6000:] + customer_run.stderr[-2000:]
    operator_run = schemathesis(server.base_url, token, OPERATOR_TAGS, tmp_path,
                                "--exclude-path", "/api/v1/auth/logout")
    assert operator_run.returncode == 0, operator_run.stdout[-6000:] + operator_run.stderr[-2000:]
    for run in (customer_run, operator_run):
        assert " passed" in run.stdout and "Tested: " in run.stdout
    assert '"unhandled_error"' not in server.log_text()
