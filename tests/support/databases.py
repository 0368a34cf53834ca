"""Real PostgreSQL for tests: the machine's server (TEST_PG_URL, default 127.0.0.1:5432 as postgres)
or, where none runs, a private one from the pgserver wheel. Every test database is new and dropped
after, so parallel runs and several checkouts never see each other's rows."""
from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import asyncpg

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


async def _reachable(url: str) -> bool:
    try:
        conn = await asyncio.wait_for(asyncpg.connect(url), 5)
    except Exception:
        return False
    await conn.close()
    return True


def admin_url() -> str:
    """URL of a database on a server where the tests may CREATE DATABASE."""
    url = os.environ.get("TEST_PG_URL", DEFAULT_ADMIN_URL)
    if asyncio.run(_reachable(url)):
        return url
    import pgserver

    pgdata = Path(tempfile.gettempdir()) / "webhost-sync-test-pg"
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    _keep.append(server)
    return server.get_uri("postgres")


_keep: list = []


def with_database(url: str, name: str) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path="/" + name))


async def create_database(admin: str, prefix: str = "wh_t") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin, name)


async def drop_database(admin: str, url: str) -> None:
    name = urlparse(url).path.lstrip("/")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
