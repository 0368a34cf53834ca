"""Infrastructure drivers behind one interface: `provision` makes a dedicated database exist and
returns its URL, `destroy` removes what `provision` made.

Each step records what it made in `state` (saved in deployments.config by the job) BEFORE moving on,
so a job re-run after a crash skips finished steps and a rollback removes exactly what was made by
this deployment (never a database or server it found already there).

- local: CREATE DATABASE on a PostgreSQL server (PROVISION_LOCAL_ADMIN_URL), migrations, URL.
- flyio: Fly Machines API (FLY_API_TOKEN): app, volume, machine running PostgreSQL.
- hetzner: Hetzner Cloud API (HCLOUD_TOKEN): firewall, server with PostgreSQL from cloud-init.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import quote, urlparse, urlunparse

import asyncpg
import httpx

from storage import migrator
from sync_server.config import Settings

Save = Callable[[dict], Awaitable[None]]
Progress = Callable[..., Awaitable[None]]  # progress(step, status, **data)

_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
POSTGRES_IMAGE = "postgres:16"


class ProvisionError(Exception):
    """A step failed for a reason an operator can act on; the message says which and why."""


class DriverNotConfigured(ProvisionError):
    pass


class Driver(Protocol):
    name: str

    def check_configured(self) -> None: ...

    async def provision(self, deployment: dict, state: dict, save: Save, progress: Progress) -> str: ...

    async def destroy(self, deployment: dict, state: dict, progress: Progress) -> None: ...


def with_database(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path="/" + name))


class LocalDriver:
    """A dedicated database on a PostgreSQL server this node can reach."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.admin_url = settings.provision_local_admin_url or with_database(settings.database_url or "", "postgres")

    def check_configured(self) -> None:
        if not self.admin_url.startswith(("postgres://", "postgresql://")):
            raise DriverNotConfigured("local driver needs PROVISION_LOCAL_ADMIN_URL or DATABASE_URL")

    @staticmethod
    def database_name(deployment: dict) -> str:
        name = (deployment.get("config") or {}).get("database_name") or f"whd_{deployment['id'].hex[:20]}"
        if not _DB_NAME.match(name):
            raise ProvisionError(f"database_name {name!r} must match {_DB_NAME.pattern}")
        return name

    async def _admin(self) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(self.admin_url, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise ProvisionError(f"PostgreSQL server for dedicated databases is unreachable: {exc}") from exc

    async def provision(self, deployment: dict, state: dict, save: Save, progress: Progress) -> str:
        name = state.get("our_database") or self.database_name(deployment)
        url = with_database(self.admin_url, name)
        if not state.get("database_created"):
            await progress("create_database", "started", database=name)
            conn = await self._admin()
            try:
                exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
                if exists and state.get("our_database") != name:
                    raise ProvisionError(f"database {name!r} already exists on the target server; refusing to reuse it")
                state["our_database"] = name  # intent first: a crash after CREATE still knows it is ours
                await save(state)
                if not exists:
                    await conn.execute(f'CREATE DATABASE "{name}"')  # name checked against _DB_NAME
            except asyncpg.DuplicateDatabaseError as exc:
                raise ProvisionError(f"database {name!r} already exists on the target server") from exc
            finally:
                await conn.close()
            state["database_created"] = True
            await save(state)
            await progress("create_database", "succeeded", database=name)
        await progress("migrate_database", "started", database=name)
        try:
            applied = await migrator.migrate(url)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ProvisionError(f"migrating {name!r} failed: {exc}") from exc
        await progress("migrate_database", "succeeded", database=name, applied=applied)
        return url

    async def destroy(self, deployment: dict, state: dict, progress: Progress) -> None:
        name = state.get("our_database")
        if not name:
            return  # nothing of ours was made
        await progress("drop_database", "started", database=name)
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # name checked when recorded
        finally:
            await conn.close()
        state.pop("database_created", None)
        state.pop("our_database", None)
        state["dropped_database"] = name
        await progress("drop_database", "succeeded", database=name)


class _HttpDriver:
    """Shared request plumbing of the cloud drivers: bearer token, JSON, errors that name the call."""

    name = ""
    token_env = ""

    def __init__(self, token: str | None, base_url: str, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.token = token
        self.base_url = base_url.rstrip("/")
        self._transport = transport

    def check_configured(self) -> None:
        if not self.token:
            raise DriverNotConfigured(f"the {self.name} driver needs {self.token_env} to be set")

    async def _call(self, method: str, path: str, body: dict | None = None, *, ok_missing: bool = False) -> dict:
        self.check_configured()
        async with httpx.AsyncClient(
            base_url=self.base_url,
            transport=self._transport,
            timeout=30,
            headers={"Authorization": f"Bearer {self.token}"},
        ) as client:
            try:
                r = await client.request(method, path, json=body)
            except httpx.HTTPError as exc:
                raise ProvisionError(f"{self.name} API unreachable ({method} {path}): {exc}") from exc
        if ok_missing and r.status_code == 404:
            return {}
        if r.status_code >= 400:
            raise ProvisionError(f"{self.name} API refused {method} {path}: HTTP {r.status_code} {r.text[:300]}")
        return r.json() if r.content else {}

    async def _remove(self, state: dict, key: str, path: str, step: str, progress: Progress) -> None:
        """DELETE the resource whose id the state holds under `key` (gone already counts as done)."""
        if state.get(key):
            await self._call("DELETE", path.format(state[key]), ok_missing=True)
            await progress(step, "succeeded", **{key: state.pop(key)})


def _resource_name(deployment: dict) -> str:
    return (deployment.get("config") or {}).get("name") or f"webhost-{deployment['id'].hex[:12]}"


class FlyDriver(_HttpDriver):
    """Fly Machines API: an app, a volume for the data, a machine running PostgreSQL on it."""

    name = "flyio"
    token_env = "FLY_API_TOKEN"

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(settings.fly_api_token, settings.fly_api_url, transport)
        self.org = settings.fly_org

    async def provision(self, deployment: dict, state: dict, save: Save, progress: Progress) -> str:
        app = state.setdefault("app_name", _resource_name(deployment))
        region = deployment.get("region") or "ams"
        cfg = deployment.get("config") or {}
        if "password" not in state:
            state["password"] = secrets.token_urlsafe(24)
            await save(state)
        if not state.get("app_created"):
            await progress("fly_create_app", "started", app=app)
            await self._call("POST", "/v1/apps", {"app_name": app, "org_slug": self.org})
            state["app_created"] = True
            await save(state)
            await progress("fly_create_app", "succeeded", app=app)
        if not state.get("volume_id"):
            await progress("fly_create_volume", "started", app=app, region=region)
            vol = await self._call(
                "POST",
                f"/v1/apps/{app}/volumes",
                {"name": "pgdata", "region": region, "size_gb": int(cfg.get("volume_gb", 10)), "encrypted": True},
            )
            state["volume_id"] = vol["id"]
            await save(state)
            await progress("fly_create_volume", "succeeded", volume_id=vol["id"])
        if not state.get("machine_id"):
            await progress("fly_create_machine", "started", app=app)
            machine = await self._call(
                "POST",
                f"/v1/apps/{app}/machines",
                {
                    "name": f"{app}-db",
                    "region": region,
                    "config": {
                        "image": cfg.get("image", POSTGRES_IMAGE),
                        "env": {
                            "POSTGRES_PASSWORD": state["password"],
                            "POSTGRES_DB": "webhost",
                            "PGDATA": "/data/pgdata",
                        },
                        "guest": {
                            "cpu_kind": "shared",
                            "cpus": int(cfg.get("cpus", 1)),
                            "memory_mb": int(cfg.get("memory_mb", 1024)),
                        },
                        "mounts": [{"volume": state["volume_id"], "path": "/data"}],
                        "services": [{"protocol": "tcp", "internal_port": 5432, "ports": [{"port": 5432}]}],
                        "restart": {"policy": "always"},
                    },
                },
            )
            state["machine_id"] = machine["id"]
            await save(state)
            await progress("fly_create_machine", "succeeded", machine_id=machine["id"])
        return f"postgresql://postgres:{quote(state['password'])}@{app}.flycast:5432/webhost"

    async def destroy(self, deployment: dict, state: dict, progress: Progress) -> None:
        app = state.get("app_name")
        await self._remove(
            state, "machine_id", f"/v1/apps/{app}/machines/{{}}?force=true", "fly_destroy_machine", progress
        )
        await self._remove(state, "volume_id", f"/v1/apps/{app}/volumes/{{}}", "fly_destroy_volume", progress)
        if state.pop("app_created", None):
            await self._call("DELETE", f"/v1/apps/{app}", ok_missing=True)
            await progress("fly_destroy_app", "succeeded", app=app)


CLOUD_INIT = """#cloud-config
packages: [postgresql]
runcmd:
  - sudo -u postgres psql -c "ALTER USER postgres PASSWORD '{password}'"
  - sudo -u postgres createdb webhost
  - echo "listen_addresses = '*'" >> /etc/postgresql/*/main/postgresql.conf
  - echo "hostssl all all 0.0.0.0/0 scram-sha-256" >> /etc/postgresql/*/main/pg_hba.conf
  - systemctl restart postgresql
"""


class HetznerDriver(_HttpDriver):
    """Hetzner Cloud API: a firewall letting in only PostgreSQL (and SSH from given sources), and a
    server that installs PostgreSQL from cloud-init."""

    name = "hetzner"
    token_env = "HCLOUD_TOKEN"

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(settings.hcloud_token, settings.hcloud_api_url, transport)

    async def provision(self, deployment: dict, state: dict, save: Save, progress: Progress) -> str:
        name = state.setdefault("server_name", _resource_name(deployment))
        cfg = deployment.get("config") or {}
        sources = list(cfg.get("allowed_ips", ["0.0.0.0/0", "::/0"]))
        if "password" not in state:
            state["password"] = secrets.token_urlsafe(24)
            await save(state)
        if not state.get("firewall_id"):
            await progress("hetzner_create_firewall", "started", name=name)
            fw = await self._call(
                "POST",
                "/firewalls",
                {
                    "name": f"{name}-fw",
                    "labels": {"webhost-deployment": str(deployment["id"])},
                    "rules": [
                        {
                            "direction": "in",
                            "protocol": "tcp",
                            "port": "5432",
                            "source_ips": sources,
                            "description": "PostgreSQL",
                        },
                        {
                            "direction": "in",
                            "protocol": "tcp",
                            "port": "22",
                            "source_ips": list(cfg.get("ssh_ips", sources)),
                            "description": "SSH",
                        },
                    ],
                },
            )
            state["firewall_id"] = fw["firewall"]["id"]
            await save(state)
            await progress("hetzner_create_firewall", "succeeded", firewall_id=state["firewall_id"])
        if not state.get("server_id"):
            await progress("hetzner_create_server", "started", name=name)
            created = await self._call(
                "POST",
                "/servers",
                {
                    "name": name,
                    "server_type": cfg.get("server_type", "cx22"),
                    "image": cfg.get("image", "ubuntu-24.04"),
                    "location": deployment.get("region") or "fsn1",
                    "firewalls": [{"firewall": state["firewall_id"]}],
                    "labels": {"webhost-deployment": str(deployment["id"])},
                    "user_data": CLOUD_INIT.format(password=state["password"]),
                    "start_after_create": True,
                },
            )
            server = created["server"]
            state["server_id"] = server["id"]
            state["ipv4"] = server["public_net"]["ipv4"]["ip"]
            await save(state)
            await progress("hetzner_create_server", "succeeded", server_id=server["id"], ipv4=state["ipv4"])
        return f"postgresql://postgres:{quote(state['password'])}@{state['ipv4']}:5432/webhost?sslmode=require"

    async def destroy(self, deployment: dict, state: dict, progress: Progress) -> None:
        await self._remove(state, "server_id", "/servers/{}", "hetzner_delete_server", progress)
        await self._remove(state, "firewall_id", "/firewalls/{}", "hetzner_delete_firewall", progress)


def driver_for(infrastructure: str, settings: Settings) -> Driver:
    if infrastructure == "local":
        return LocalDriver(settings)
    if infrastructure == "flyio":
        return FlyDriver(settings)
    if infrastructure == "hetzner":
        return HetznerDriver(settings)
    raise ProvisionError(f"unknown infrastructure {infrastructure!r}")


def public_state(state: dict[str, Any]) -> dict[str, Any]:
    """Driver state without secrets, for API answers and events."""
    return {k: v for k, v in state.items() if k != "password"}
