"""An in-process Runtime with provisioning installed (for tests that drive the services directly)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from sync_server.config import Settings
from sync_server.domain import provisioning
from sync_server.domain.runtime import Runtime

from . import databases, tenants

TEST_SECRET = "test-secret-key-0123456789abcdef0123456789"
TEST_ENCRYPTION_KEY = "dGVzdC1lbmNyeXB0aW9uLWtleS0wMTIzNDU2Nzg5YWI"  # as tests/conftest.py


@asynccontextmanager
async def provisioning_runtime(
    database_url: str, data_dir, admin_url: str, *, keep_databases: bool = False, **env: str
):
    settings = Settings.from_env(
        {
            "DATABASE_URL": database_url,
            "DATA_DIR": str(data_dir),
            "SECRET_KEY": TEST_SECRET,
            "ENCRYPTION_KEY": TEST_ENCRYPTION_KEY,
            "MIGRATION_CLEANUP_GRACE_SECONDS": "0",
            "PROVISION_LOCAL_ADMIN_URL": admin_url,
            **env,
        }
    )
    rt = Runtime(settings)
    provisioning.install(rt)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()
        names = [] if keep_databases else await tenants.dedicated_database_names(database_url)
        for name in names:
            await databases.drop_database(admin_url, databases.with_database(admin_url, name))
