"""Real PostgreSQL for tests: the machine's server (TEST_PG_URL, default 127.0.0.1:5432 as postgres)
or, where none runs, a private one from the pgserver wheel. Every test database is new and dropped
after, so parallel runs and several checkouts never see each other's rows."""

from __future__ import annotations

import asyncio
import hashlib
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


TEMPLATE_PREFIX = "wh_tpl"


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Template:
    """A migrated database made once per pytest session and cloned per test (CREATE DATABASE ...
    TEMPLATE: ~0.1 s instead of running every migration, 1.4-4.2 s).

    Safe beside other pytest runs on the same server: the name is unique per session, and the session
    holds a session-level advisory lock on it (keyed by the name, on the admin database) for as long as
    it lives. A template whose lock nobody holds belongs to a killed run and is dropped when the next
    session starts, so a stale one never breaks (or outlives) a new run. After migrating, the template
    refuses connections (ALLOW_CONNECTIONS false, not copied to clones), so no stray connection can
    make a clone fail with "source database is being accessed by other users".

    A clone is exactly a freshly migrated database: migrations are all that is in it (the scope key
    of migration 0080 is installed by Database.open, per clone, as on a fresh one; the cluster-wide
    role webhost_app was created/altered by the template's migrations and is the same for both).
    tests/test_migrations.py compares a clone with a database migrated from scratch."""

    def __init__(self, admin: str) -> None:
        self.admin = admin
        self.name = f"{TEMPLATE_PREFIX}_{uuid.uuid4().hex[:12]}"
        self._loop = asyncio.new_event_loop()  # the lock holder's connection lives on this loop
        self._holder: asyncpg.Connection | None = None

    def create(self) -> Template:
        self._loop.run_until_complete(self._create())
        return self

    async def _create(self) -> None:
        from storage import migrator

        self._holder = await asyncpg.connect(self.admin, server_settings={"application_name": "webhost-sync-tests"})
        await self._holder.execute("SELECT pg_advisory_lock($1)", _lock_key(self.name))
        await _drop_stale_templates(self._holder)
        await self._holder.execute(f'CREATE DATABASE "{self.name}"')
        await migrator.migrate(with_database(self.admin, self.name))
        await self._holder.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')

    async def clone(self, prefix: str = "wh_t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self.admin)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.name}"')
        finally:
            await conn.close()
        return with_database(self.admin, name)

    def drop(self) -> None:
        async def _drop() -> None:
            if self._holder is not None:
                await self._holder.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                await self._holder.close()  # releases the lock

        try:
            self._loop.run_until_complete(_drop())
        finally:
            self._loop.close()


async def _drop_stale_templates(conn: asyncpg.Connection) -> None:
    names = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", TEMPLATE_PREFIX + r"\_%")
    for (name,) in names:
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", _lock_key(name)):
            try:  # nobody holds it: its run was killed
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(name))
