"""`webhost-sync` command line: serve (with WORKERS > 1 a supervisor of that many, node/workers.py),
migrate, create-operator, env, generate-key, rotate-key, migrate-tenant, export-tenant, import-tenant."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

import structlog

from sync_server import logs
from sync_server.config import ConfigError, Settings
from sync_server.node import migrate_tenant_cli, patches, tenant_archive_cli, workers

if TYPE_CHECKING:
    from hypercorn.config import Config, Sockets

log = structlog.get_logger("sync_server.node.cli")


def _settings() -> Settings:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"webhost-sync: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.configure(settings.effective_log_format, settings.log_level)
    return settings


def _with_database(settings: Settings) -> tuple[Settings, str]:
    """The settings with DATABASE_URL resolved (given, or the embedded server started under
    DATA_DIR), and that URL."""
    if settings.database_url:
        return settings, settings.database_url
    from storage import embedded

    try:
        url = embedded.start(settings.data_dir)
    except embedded.EmbeddedUnavailable as exc:
        print(f"webhost-sync: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"webhost-sync: embedded PostgreSQL in {(settings.data_dir / 'postgres').resolve()}", file=sys.stderr)
    return dataclasses.replace(settings, database_url=url), url


def _bind(config: Config) -> Sockets:
    """The listening sockets, bound before anything else starts (the embedded database, the
    runtime's tasks): a busy port is one line naming it and exit code 2, nothing logged as started."""
    try:
        return config.create_sockets()
    except OSError as exc:
        print(f"webhost-sync: cannot listen on {', '.join(config.bind)}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings()
    worker = getattr(args, "worker", None)
    if settings.workers > 1 and worker is None:
        return _supervise(settings)
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.config import Config
    from hypercorn.utils import wrap_app

    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.graceful_timeout = settings.shutdown_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # No Hypercorn pings: its ping task sleeps a whole interval after the socket closes, so every
    # closed websocket lingers (and SIGTERM waits) that long (measured: 26 s shutdown at 25 s).
    # Dead peers are found by the sync layer's idle timeout instead: it pings a connection quiet for
    # half of SYNC_IDLE_TIMEOUT_SECONDS itself (RoomRegistry.close_idle) and pings and pongs count as
    # activity (patches: websocket_intake), so a silent listener that answers pings stays.
    config.websocket_ping_interval = None
    # The sync endpoint enforces SYNC_MAX_MESSAGE_BYTES itself while a frame arrives (patches:
    # websocket_intake; 1009 with a reason, logged with tenant and room); Hypercorn's own cap is the
    # same value, so it never refuses a frame the setting allows (without the patch it is the limit).
    config.websocket_max_message_size = settings.sync_max_message_bytes
    # A fleet reconnecting at once (a node restart, a cell tower back) opens hundreds of sockets in
    # the same instant: Hypercorn's default accept queue of 100 overflowed (nstat
    # TcpExtListenOverflows: 426 in one 4,000-client burst), each overflow costing that client a
    # SYN retransmit (~1 s). Node's default is 511; the kernel caps it at net.core.somaxconn.
    config.backlog = 2048
    if worker is not None:
        # One of WORKERS: the shared port in its SO_REUSEPORT group (Hypercorn sets the option when
        # it is told of several workers), and the worker's own port beside it (its /metrics).
        config.workers = settings.workers
        own = Config()
        own.bind = [f"{settings.host}:{workers.own_port(settings, worker)}"]
        sockets = _bind(config)
        sockets.insecure_sockets.extend(_bind(own).insecure_sockets)
        settings = dataclasses.replace(settings, node_id=workers.node_id(settings, worker))
    else:
        sockets = _bind(config)
    settings, _url = _with_database(settings)

    from sync_server.node.app import create_app

    app = create_app(settings)
    patches.apply_all()
    rt = app.extensions["webhost"]
    [listening, *_] = [*sockets.insecure_sockets, *sockets.secure_sockets]
    host, port = listening.getsockname()[:2]

    async def main() -> None:
        stop = asyncio.Event()
        draining: list[asyncio.Future] = []

        async def shutdown() -> None:
            log.info("shutdown_requested")
            await rt.drain()
            stop.set()

        def on_signal() -> None:
            if not draining:  # a second signal must not stop the server before the drain is done
                draining.append(asyncio.ensure_future(shutdown()))

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        log.info("listening", url=f"http://{host}:{port}")
        # What start-up allocated (modules, the app, schemas: ~90k objects) lives as long as the
        # process; frozen, the full collections that run now and then under traffic stop walking it
        # (measured: gen-2 pauses of up to 450 ms at 500 req/s on a loaded machine, 86 ms frozen).
        gc.collect()
        gc.freeze()
        # hypercorn.asyncio.serve, given the sockets bound above (serve itself binds only after
        # the app's start-up ran).
        app_wrapper = wrap_app(app, config.wsgi_max_body_size, None)
        patches.front_door_serves(app_wrapper, config, http1=settings.http_transport == "httptools")
        await worker_serve(app_wrapper, config, sockets=sockets, shutdown_trigger=stop.wait)

    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    return 0


def _supervise(settings: Settings) -> int:
    """WORKERS > 1: hold the port (busy: exit 2), resolve the database once, run the workers."""
    from hypercorn.config import Config

    probe = Config()
    probe.bind = [f"{settings.host}:{settings.port}"]
    probe.workers = settings.workers  # SO_REUSEPORT: the workers bind the same port beside it
    held = _bind(probe)
    port = held.insecure_sockets[0].getsockname()[1]
    try:
        settings, url = _with_database(settings)
        return workers.supervise(settings, port, url)
    finally:
        for sock in held.insecure_sockets:
            sock.close()


def cmd_migrate(_args: argparse.Namespace) -> int:
    _settings_used, url = _with_database(_settings())
    from storage import migrator

    applied = asyncio.run(migrator.migrate(url))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(map(str, applied))}" if applied else ""))
    return 0


def cmd_create_operator(args: argparse.Namespace) -> int:
    settings, url = _with_database(_settings())
    from storage import Database, migrator, platform_users
    from sync_server.domain.accounts.passwords import hash_password

    async def run() -> str:
        await migrator.migrate(url)
        # platform tables only, beside running servers: leave their scope key as it is (this
        # command may run without their SECRET_KEY, e.g. in development with another DATA_DIR key)
        db = Database(url, settings.app_role(), min_size=1, max_size=1)
        await db.open(install_key=False)
        try:
            return await platform_users.upsert(db, args.email, hash_password(args.password), args.role)
        finally:
            await db.close()

    try:
        user_id = asyncio.run(run())
    except RuntimeError as exc:  # the application role cannot log in or is refused: say why, no traceback
        print(f"webhost-sync: {exc}", file=sys.stderr)
        return 2
    print(f"operator {args.email} ({args.role}) id={user_id}")
    return 0


def cmd_generate_key(_args: argparse.Namespace) -> int:
    from storage.sealing import new_key

    print(new_key())
    return 0


def cmd_rotate_key(_args: argparse.Namespace) -> int:
    """Re-seal every stored credential under ENCRYPTION_KEY (old values open with ENCRYPTION_OLD_KEYS)."""
    settings, url = _with_database(_settings())
    from storage import Database, DatabaseRegistry, migrator, sealed_columns, sealing

    ring = settings.keyring()
    sealing.install(ring)

    async def run() -> tuple[dict[str, int], int]:
        await migrator.migrate(url)
        db = Database(url, settings.app_role(), min_size=1, max_size=1)
        await db.open(install_key=False)  # beside running servers: their scope key stays as it is
        registry = DatabaseRegistry(db, dedicated_pool_max=1)
        try:
            async with db.operator("rotate_key_check") as conn:
                if not await conn.fetchval("SELECT webhost_is_operator()"):
                    raise RuntimeError(
                        "the database does not accept this node's scope: run rotate-key with the servers' SECRET_KEY"
                    )
            counts = await sealed_columns.reseal(db, rotate=True)
            left = await sealed_columns.pending(db)
            await registry.reload()  # the shared database's routes are re-sealed (and open) by now
            for dedicated in await registry.dedicated():  # tenant tables holding credentials (webhooks)
                for name, n in (await sealed_columns.reseal(dedicated, rotate=True)).items():
                    counts[name] += n
                left += await sealed_columns.pending(dedicated)
            return counts, left
        finally:
            await registry.close()

    try:
        counts, left = asyncio.run(run())
    except (RuntimeError, sealing.SealError) as exc:
        print(f"webhost-sync: {exc}", file=sys.stderr)
        return 2
    for name, n in counts.items():
        print(f"{name:34} {n} re-sealed")
    print(f"every stored credential is sealed under key {ring.primary_id}" if not left else f"{left} value(s) left")
    if not left and ring.old:
        print("ENCRYPTION_OLD_KEYS may now be emptied (restart the nodes after)")
    return 0 if not left else 1


def cmd_env(_args: argparse.Namespace) -> int:
    """Every variable: the value in effect (from the environment, else the default), the default,
    `*` on those set, and what it means. Secrets are shown as set or not, never their value."""
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"webhost-sync: configuration error: {exc}", file=sys.stderr)
        return 2
    print("NAME = value in effect (default when unset); * marks the variables set in the environment")
    for item in settings.described(os.environ):
        default = "" if item.value == item.default else f"  (default {item.default})"
        print(f"{'*' if item.is_set else ' '} {item.name} = {item.value}{default}\n      {item.doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webhost-sync", description="Real-time Yjs sync server for fleet apps")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run the server (HOST, PORT, WORKERS; embedded PostgreSQL when DATABASE_URL is unset)"
    )
    serve.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # one of WORKERS (workers.py)
    sub.add_parser("migrate", help="apply pending database migrations and exit")
    op = sub.add_parser("create-operator", help="create (or reset) a platform operator")
    op.add_argument("--email", required=True)
    op.add_argument("--password", required=True)
    op.add_argument("--role", choices=("admin", "staff"), default="admin")
    sub.add_parser("env", help="list every environment variable: the value in effect, its default, its meaning")
    sub.add_parser("generate-key", help="print a new ENCRYPTION_KEY")
    sub.add_parser(
        "rotate-key",
        help="re-seal every stored credential under ENCRYPTION_KEY (the old key listed in ENCRYPTION_OLD_KEYS)",
    )
    migrate_tenant_cli.add_parser(sub)
    tenant_archive_cli.add_parsers(sub)
    args = parser.parse_args(argv)
    handler = {
        "serve": cmd_serve,
        "migrate": cmd_migrate,
        "create-operator": cmd_create_operator,
        "env": cmd_env,
        "generate-key": cmd_generate_key,
        "rotate-key": cmd_rotate_key,
        "migrate-tenant": migrate_tenant_cli.run,
        "export-tenant": tenant_archive_cli.export_tenant,
        "import-tenant": tenant_archive_cli.import_tenant,
    }[args.command]
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
