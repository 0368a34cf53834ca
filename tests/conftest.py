"""Shared fixtures: real PostgreSQL (a new database per test, cloned from one migrated per session), real Redis, a real server process."""

from __future__ import annotations

import asyncio

import pytest

from storage import AppRole, Database, sealing

from .support import databases, redis_server
from .support.server import ServerProcess

TEST_SECRET = "test-secret-key-0123456789abcdef0123456789"
TEST_ENCRYPTION_KEY = "dGVzdC1lbmNyeXB0aW9uLWtleS0wMTIzNDU2Nzg5YWI"  # 32 bytes, base64 (the servers' too)

# Tests that call storage repositories directly seal and open credentials with the servers' key.
TEST_KEYRING = sealing.Keyring.from_text(TEST_ENCRYPTION_KEY)
sealing.install(TEST_KEYRING)


@pytest.fixture(autouse=True)
def _servers_keyring():
    """Every test starts with the servers' keyring: a Runtime built in-process (REST fixtures, config
    tests, key rotation) installs its own process-wide, and a later test sealing a value for a server
    process would seal it under a key the server lacks (test order decided pass or fail)."""
    sealing.install(TEST_KEYRING)
    yield


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    return databases.admin_url()


@pytest.fixture
def fresh_database_url(pg_admin_url):
    """A new, empty database (no migrations applied)."""
    url = asyncio.run(databases.create_database(pg_admin_url))
    yield url
    asyncio.run(databases.drop_database(pg_admin_url, url))


@pytest.fixture(scope="session")
def migrated_template(pg_admin_url):
    """Every migration applied once per session, into a template the tests clone (support/databases.py)."""
    template = databases.Template(pg_admin_url).create()
    yield template
    template.drop()


@pytest.fixture
def database_url(pg_admin_url, migrated_template) -> str:
    """A new database with every migration applied: a clone of the session's migrated template.
    Tests of the migrations themselves migrate `fresh_database_url` instead."""
    url = asyncio.run(migrated_template.clone())
    yield url
    asyncio.run(databases.drop_database(pg_admin_url, url))


@pytest.fixture
async def db(database_url):
    database = await Database(database_url, AppRole.from_secret(TEST_SECRET), min_size=1, max_size=5).open()
    yield database
    await database.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return redis_server.redis_url()


@pytest.fixture
def server_env(database_url, tmp_path) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp_path / "data"),
        "SECRET_KEY": TEST_SECRET,
        "ENCRYPTION_KEY": TEST_ENCRYPTION_KEY,
        "LOG_LEVEL": "info",
    }


@pytest.fixture
def server(server_env, tmp_path):
    """A running `webhost-sync serve` on a free port against this test's database."""
    proc = ServerProcess(server_env, log_path=tmp_path / "server.log").start()
    yield proc
    proc.stop()


# Markers (registered in pyproject): `make test` runs everything; `make test-fast` deselects these.
# By module where every test of it has the trait, by fixture where the fixture brings it; explicit
# @pytest.mark.slow / .js elsewhere.
_MODULE_MARKS = {
    "test_sync_js": ("js",),
    "test_sync_clients_python": ("js",),
    "test_tracking_sync": ("js",),
    "test_provisioning_api": ("js",),
    "test_dashboard_example": ("browser", "js"),
    "test_multinode": ("multinode", "js"),
    "test_cluster_pause": ("multinode", "js"),
    "test_socket_credentials": ("js",),
    "test_durable_acks": ("js",),
    "test_sync_client_js": ("js",),
    "test_sync_client_browser": ("browser", "js"),
    "test_track_feedback": ("multinode", "js"),
    "test_fuzz": ("slow",),  # minutes of hostile traffic against one node
    "test_bench_smoke": ("slow",),  # a whole benchmark run, small
}
_FIXTURE_MARKS = {"redis_url": "multinode", "cluster": "multinode"}
# Single tests (module, name): `slow` where the call alone took ~10 s or more on the 2-core machine
# (`pytest --durations`), `js` where one test of a module drives a real JS client.
_TEST_MARKS = {
    ("test_openapi_contract", "test_schemathesis_finds_nothing"): ("slow",),
    ("test_geofence_index", "test_inside_all_matches_a_point_by_point_reference"): ("slow",),
    ("test_geofence_index", "test_transitions_over_masks_match_a_walk_over_reference_sets"): ("slow",),
    ("test_packaging", "test_wheel_contains_every_module_and_migration"): ("slow",),
    ("test_server", "test_embedded_postgres_starts_is_reused_and_stops"): ("slow",),
    ("test_shared_limits", "test_rest_rate_limit_without_redis"): ("slow",),
    ("test_shared_limits", "test_connection_limit_without_redis"): ("slow",),
    ("test_shared_limits", "test_connection_limits_off_lets_everybody_in"): ("slow",),
    ("test_tenant_migration", "test_shared_to_dedicated_to_shared_with_live_writes"): ("slow",),
    ("test_provisioning_drivers", "test_local_deployment_one_active_per_customer_and_resume_after_crash"): ("slow",),
    ("test_server", "test_embedded_postgres_of_a_killed_server_is_taken_over_and_stopped"): ("slow",),
    ("test_transport_edges", "test_silent_pycrdt_listener_stays_connected_and_gets_the_next_edit"): ("slow",),
    ("test_app_sessions", "test_customer_admin_manages_users_and_sign_out_or_new_password_ends_sessions"): ("slow",),
    ("test_hostile_input", "test_nan_presence_is_refused_and_a_stock_js_client_joining_stays_connected"): ("js",),
    ("test_sync_client_js", "test_offline_across_midnight_restart_then_durable_rows_and_refreshed_tokens"): ("slow",),
}


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        names = set(_MODULE_MARKS.get(module, ()))
        names.update(mark for fixture, mark in _FIXTURE_MARKS.items() if fixture in item.fixturenames)
        names.update(_TEST_MARKS.get((module, getattr(item, "originalname", item.name)), ()))
        for name in sorted(names):
            item.add_marker(getattr(pytest.mark, name))
