"""Fixtures for the REST suites: the real app (create_app) on this test's real PostgreSQL database,
driven through Quart's test client, with helpers to make operators, customers and keys."""

from __future__ import annotations

import dataclasses

import pytest

from storage import platform_users
from sync_server.config import Settings
from sync_server.domain.accounts.passwords import hash_password
from sync_server.node.app import create_app

from ..conftest import TEST_ENCRYPTION_KEY, TEST_SECRET

OPERATOR_PASSWORD = "correct horse battery staple"


@dataclasses.dataclass
class Customer:
    id: str
    slug: str
    key: str  # its first API key (admin)
    body: dict

    @property
    def auth(self) -> dict:
        return bearer(self.key)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


class Api:
    """The test client plus the few steps most tests start with."""

    def __init__(self, app, client) -> None:
        self.app = app
        self.client = client
        self._operators: dict[str, str] = {}
        self._n = 0

    @property
    def runtime(self):
        return self.app.extensions["webhost"]

    def __getattr__(self, name):  # get/post/patch/delete of the test client
        return getattr(self.client, name)

    async def operator(self, role: str = "admin") -> dict:
        """Auth header of a logged-in operator with `role`."""
        if role not in self._operators:
            email = f"{role}@ops.example.com"
            await platform_users.upsert(self.runtime.db, email, hash_password(OPERATOR_PASSWORD), role)
            r = await self.client.post("/api/v1/auth/login", json={"email": email, "password": OPERATOR_PASSWORD})
            assert r.status_code == 200, await r.get_data(as_text=True)
            self._operators[role] = (await r.get_json())["token"]
        return bearer(self._operators[role])

    async def customer(self, slug: str | None = None, plan_id: str = "hobby", **fields) -> Customer:
        self._n += 1
        slug = slug or f"cust-{self._n}"
        r = await self.client.post(
            "/api/v1/customers",
            headers=await self.operator(),
            json={"slug": slug, "name": slug.title(), "plan_id": plan_id, **fields},
        )
        assert r.status_code == 201, await r.get_data(as_text=True)
        body = await r.get_json()
        return Customer(body["customer"]["id"], slug, body["api_key"]["key"], body)

    async def key(self, customer: Customer, permissions: list[str], **fields) -> str:
        r = await self.client.post(
            "/api/v1/api-keys", headers=customer.auth, json={"permissions": permissions, **fields}
        )
        assert r.status_code == 201, await r.get_data(as_text=True)
        return (await r.get_json())["key"]


def app_settings(database_url: str) -> Settings:
    # the test process's keyring (tests/conftest.py): a Runtime installs its settings' keyring process-wide,
    # and a later test sealing in the test process for a server process must still use the servers' key
    return Settings(
        database_url=database_url,
        secret_key=TEST_SECRET,
        encryption_key=TEST_ENCRYPTION_KEY,
        migrate_on_start=False,
        webhook_allow_private_urls=True,
    )


@pytest.fixture
async def api(database_url):
    app = create_app(app_settings(database_url))
    async with app.test_app() as test_app:
        yield Api(app, test_app.test_client())


async def error_of(response) -> dict:
    body = await response.get_json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), body
    return body["error"]
