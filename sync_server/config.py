"""Configuration from the environment (Twelve-Factor), validated once at start.

Every variable, its default and its meaning is listed in README.md; a bad value stops start-up with
a message naming the variable, never a traceback.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from storage import AppRole
    from storage.sealing import Keyring


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _number(name: str, kind: type, what: str, lo, hi) -> Callable[[str], Any]:
    """Parser of a numeric setting: `kind(raw)` within [lo, hi], else ConfigError naming `name`."""

    def parse(raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _int(name: str, lo: int, hi: int) -> Callable[[str], int]:
    return _number(name, int, "an integer", lo, hi)


def _float(name: str, lo: float, hi: float) -> Callable[[str], float]:
    return _number(name, float, "a number", lo, hi)


def _choice(name: str, *options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ConfigError(f"{name} must be one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def _bool(name: str) -> Callable[[str], bool]:
    def parse(raw: str) -> bool:
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")

    return parse


def _url(name: str, *schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        parsed = urlparse(raw)
        if parsed.scheme not in schemes:
            raise ConfigError(f"{name} must be a URL with scheme {' or '.join(schemes)}, got {raw!r}")
        return raw

    return parse


def _text(name: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not raw.strip():
            raise ConfigError(f"{name} must not be empty")
        return raw

    return parse


def _key(name: str, *, several: bool = False) -> Callable[[str], str]:
    """A 32-byte base64 key (or a comma-separated list of them), checked at start."""

    def parse(raw: str) -> str:
        from storage.sealing import parse_key

        for part in raw.split(",") if several else [raw]:
            if several and not part.strip():
                continue
            try:
                parse_key(part, name)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        return raw.strip()

    return parse


def _setting(env: str, default, parse=None, doc: str = "", *, secret: bool = False):
    """A setting read from `env`; `secret` ones are never printed (`webhost-sync env` says only
    whether they are set)."""
    return field(default=default, metadata={"env": env, "parse": parse or _text(env), "doc": doc, "secret": secret})


def _shown(value) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if value == "":
        return '""'
    return str(value)


def _without_password(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)).geturl()


@dataclass(frozen=True)
class Described:
    """One line of `webhost-sync env`."""

    name: str
    value: str  # in effect
    default: str
    is_set: bool
    doc: str


@dataclass(frozen=True)
class Settings:
    environment: str = _setting(
        "WEBHOST_ENV",
        "development",
        _choice("WEBHOST_ENV", "development", "production"),
        "development or production; production requires SECRET_KEY and ENCRYPTION_KEY",
    )
    host: str = _setting("HOST", "127.0.0.1", doc="interface to listen on")
    port: int = _setting("PORT", 8080, _int("PORT", 0, 65535), "TCP port (0 picks a free one)")
    workers: int = _setting(
        "WORKERS",
        1,
        _int("WORKERS", 1, 64),
        "node processes serving PORT together (SO_REUSEPORT; one per core), each a node of its own; more "
        "than 1 needs REDIS_URL (the workers share documents and presence through the Redis fan-out)",
    )
    worker_port_base: int = _setting(
        "WORKER_PORT_BASE",
        0,
        _int("WORKER_PORT_BASE", 0, 65535),
        "with WORKERS > 1, worker i (0, 1, ...) also listens on this port + i alone: its own address, "
        "where GET /metrics answers that worker's numbers (one Prometheus target each); 0: PORT + 1",
    )
    database_url: str | None = _setting(
        "DATABASE_URL",
        None,
        _url("DATABASE_URL", "postgresql", "postgres"),
        "libpq URI of the shared database as its owner (it migrates; the pools "
        "log in as webhost_app); unset starts embedded PostgreSQL",
    )
    database_app_password: str | None = _setting(
        "DATABASE_APP_PASSWORD",
        None,
        secret=True,
        doc="password the serving pools log in with as webhost_app (set on the role by the owner when it does "
        "not work yet); unset: no password (trust/peer, embedded PostgreSQL)",
    )
    redis_url: str | None = _setting(
        "REDIS_URL",
        None,
        _url("REDIS_URL", "redis", "rediss", "unix"),
        "Redis for cross-node fan-out; unset runs a single node",
    )
    data_dir: Path = _setting(
        "DATA_DIR",
        Path("./var"),
        lambda raw: Path(_text("DATA_DIR")(raw)),
        "embedded database folder and the dev secret key",
    )
    secret_key: str | None = _setting(
        "SECRET_KEY",
        None,
        secret=True,
        doc="token signing key (>= 32 chars); unset in development: one generated once and kept in DATA_DIR",
    )
    encryption_key: str | None = _setting(
        "ENCRYPTION_KEY",
        None,
        _key("ENCRYPTION_KEY"),
        "AES-256-GCM key (32 bytes, base64; `webhost-sync generate-key`) sealing stored credentials "
        "(dedicated database URLs, driver passwords); required in production; in development "
        "generated once and kept in DATA_DIR/encryption_key",
        secret=True,
    )
    encryption_old_keys: str | None = _setting(
        "ENCRYPTION_OLD_KEYS",
        None,
        _key("ENCRYPTION_OLD_KEYS", several=True),
        "comma-separated earlier ENCRYPTION_KEYs, kept only to open values until "
        "`webhost-sync rotate-key` has re-sealed every row under ENCRYPTION_KEY",
        secret=True,
    )
    metrics_token: str | None = _setting(
        "METRICS_TOKEN",
        None,
        doc="GET /metrics needs `Authorization: Bearer <METRICS_TOKEN>`; unset: only loopback clients are answered",
        secret=True,
    )
    log_format: str = _setting(
        "LOG_FORMAT",
        "",
        _choice("LOG_FORMAT", "json", "console"),
        "json or console; default console in development, json in production",
    )
    log_level: str = _setting(
        "LOG_LEVEL",
        "info",
        _choice("LOG_LEVEL", "debug", "info", "warning", "error"),
        "least severe log level written: debug, info, warning or error",
    )
    migrate_on_start: bool = _setting(
        "MIGRATE_ON_START", True, _bool("MIGRATE_ON_START"), "serve applies pending migrations before accepting traffic"
    )
    db_pool_min: int = _setting(
        "DB_POOL_MIN", 2, _int("DB_POOL_MIN", 1, 1000), "connections each database pool keeps open"
    )
    db_pool_max: int = _setting(
        "DB_POOL_MAX", 20, _int("DB_POOL_MAX", 1, 1000), "most connections of each database pool"
    )
    partition_days_ahead: int = _setting(
        "PARTITION_DAYS_AHEAD",
        7,
        _int("PARTITION_DAYS_AHEAD", 1, 366),
        "daily partitions of gps_positions/usage_metrics created ahead",
    )
    maintenance_interval: float = _setting(
        "MAINTENANCE_INTERVAL_SECONDS",
        3600.0,
        _float("MAINTENANCE_INTERVAL_SECONDS", 1, 86400),
        "how often partitions and retention are maintained",
    )
    operator_session_ttl: int = _setting(
        "OPERATOR_SESSION_TTL_SECONDS",
        43200,
        _int("OPERATOR_SESSION_TTL_SECONDS", 60, 30 * 86400),
        "lifetime of an operator bearer token from POST /api/v1/auth/login",
    )
    event_loop: str = _setting(
        "EVENT_LOOP",
        "uvloop",
        _choice("EVENT_LOOP", "uvloop", "asyncio"),
        "event loop of `serve`: uvloop (measured: less CPU per request) or asyncio",
    )
    api_key_cache_seconds: float = _setting(
        "API_KEY_CACHE_SECONDS",
        2.0,
        _float("API_KEY_CACHE_SECONDS", 0, 60),
        "how long a node reuses an accepted API key without a lookup (0: never); revocation and "
        "suspension on the same node apply at once, on other nodes within this time",
    )
    shutdown_timeout: float = _setting(
        "SHUTDOWN_TIMEOUT_SECONDS",
        30.0,
        _float("SHUTDOWN_TIMEOUT_SECONDS", 1, 3600),
        "how long SIGTERM waits for connections to flush and close",
    )
    tracking_max_future: float = _setting(
        "TRACKING_MAX_FUTURE_SECONDS",
        300.0,
        _float("TRACKING_MAX_FUTURE_SECONDS", 0, 86400),
        "GPS fixes further ahead of the server clock are rejected (future)",
    )
    tracking_day_slack: float = _setting(
        "TRACKING_DAY_SLACK_SECONDS",
        3600.0,
        _float("TRACKING_DAY_SLACK_SECONDS", 0, 86400),
        "a track doc's fixes may stray this far outside its UTC day (outside_day)",
    )
    tracking_max_accuracy: float = _setting(
        "TRACKING_MAX_ACCURACY_METERS",
        1000.0,
        _float("TRACKING_MAX_ACCURACY_METERS", 1, 1e7),
        "fixes reporting a worse accuracy are rejected (inaccurate)",
    )
    tracking_max_speed: float = _setting(
        "TRACKING_MAX_SPEED_KMH",
        400.0,
        _float("TRACKING_MAX_SPEED_KMH", 1, 1e5),
        "implied speed from the previous fix above this is a jump",
    )
    tracking_batch_points: int = _setting(
        "TRACKING_BATCH_POINTS",
        10_000,
        _int("TRACKING_BATCH_POINTS", 100, 10**6),
        "most points materialized in one transaction",
    )
    tracking_readers: int = _setting(
        "TRACKING_READERS",
        2,
        _int("TRACKING_READERS", 0, 64),
        "helper processes that read and decode new points of track documents, each "
        "with its own copy of its rooms' documents, beside the event loop (0: on the "
        "event loop itself)",
    )
    tracking_bulk_concurrency: int = _setting(
        "TRACKING_BULK_CONCURRENCY",
        2,
        _int("TRACKING_BULK_CONCURRENCY", 1, 256),
        "large batches (1,000+ points: uploads) in the database at once per "
        "node; more than about one per database core only adds contention",
    )
    tracking_flush: float = _setting(
        "TRACKING_FLUSH_SECONDS",
        0.05,
        _float("TRACKING_FLUSH_SECONDS", 0, 60),
        "how long new track points gather before a batch is materialized",
    )
    retention_batch_rows: int = _setting(
        "RETENTION_BATCH_ROWS",
        10_000,
        _int("RETENTION_BATCH_ROWS", 100, 10**6),
        "rows the retention job deletes per statement",
    )

    sync_max_message_bytes: int = _setting(
        "SYNC_MAX_MESSAGE_BYTES",
        64 * 1024 * 1024,
        _int("SYNC_MAX_MESSAGE_BYTES", 1024, 1024 * 1024 * 1024),
        "largest websocket frame accepted (a phone's whole offline day arrives as one); a "
        "bigger one closes that peer 1009 with a reason, 4413 when it sends one again",
    )
    sync_frame_budget_bytes: int = _setting(
        "SYNC_FRAME_BUDGET_BYTES",
        64 * 1024 * 1024,
        _int("SYNC_FRAME_BUDGET_BYTES", 64 * 1024, 64 * 1024**3),
        "bytes of websocket frames being received and applied at once, node-wide; past it the "
        "server stops reading large frames (TCP backpressure) until earlier ones are applied",
    )
    sync_refusal_hold: float = _setting(
        "SYNC_REFUSAL_HOLD_SECONDS",
        10.0,
        _float("SYNC_REFUSAL_HOLD_SECONDS", 0, 25),
        "a refused websocket (4401/4403/1013...) is held open this long before its close, so "
        "clients that reconnect at once when a socket opens retry once per hold, not per 100 ms",
    )
    sync_refusal_hold_max: int = _setting(
        "SYNC_REFUSAL_HOLD_MAX",
        10_000,
        _int("SYNC_REFUSAL_HOLD_MAX", 0, 10_000_000),
        "refused websockets held at once per node; past it a refusal closes at once",
    )
    sync_transport: str = _setting(
        "SYNC_TRANSPORT",
        "lean",
        _choice("SYNC_TRANSPORT", "lean", "hypercorn"),
        "who serves /sync/ websockets: lean (the socket is handed to sync.transport after the "
        "upgrade; measured less memory and CPU per connection) or hypercorn (its own stream)",
    )
    http_transport: str = _setting(
        "HTTP_TRANSPORT",
        "httptools",
        _choice("HTTP_TRANSPORT", "httptools", "hypercorn"),
        "who serves plain HTTP/1.1 requests (REST, the web app): httptools (uvicorn's protocol from "
        "the front door, with Hypercorn's limits; measured less CPU per request) or hypercorn (h11)",
    )
    sync_send_queue_limit: int = _setting(
        "SYNC_SEND_QUEUE_LIMIT",
        16384,
        _int("SYNC_SEND_QUEUE_LIMIT", 16, 10_000_000),
        "frames queued to one peer before it is closed 1013 (does not read)",
    )
    sync_send_queue_bytes: int = _setting(
        "SYNC_SEND_QUEUE_BYTES",
        64 * 1024 * 1024,
        _int("SYNC_SEND_QUEUE_BYTES", 64 * 1024, 4 * 1024**3),
        "bytes queued to one peer before it is closed 1013 (does not read); at "
        "least SYNC_MAX_MESSAGE_BYTES, so a relayed update of any accepted size fits",
    )
    sync_commit_window_ms: float = _setting(
        "SYNC_COMMIT_WINDOW_MS",
        10.0,
        _float("SYNC_COMMIT_WINDOW_MS", 0, 20),
        "group commit: how long the update log waits to batch writes",
    )
    room_evict_seconds: float = _setting(
        "ROOM_EVICT_SECONDS",
        30.0,
        _float("ROOM_EVICT_SECONDS", 0, 86400),
        "an empty room leaves memory after this long idle (once durable)",
    )
    compact_after_updates: int = _setting(
        "COMPACT_AFTER_UPDATES",
        1000,
        _int("COMPACT_AFTER_UPDATES", 10, 10_000_000),
        "log rows of a doc that trigger compaction into its snapshot",
    )
    compact_after_bytes: int = _setting(
        "COMPACT_AFTER_BYTES",
        16 * 1024 * 1024,
        _int("COMPACT_AFTER_BYTES", 64 * 1024, 2**40),
        "bytes of a doc's uncompacted log rows that trigger compaction",
    )
    sync_idle_timeout: float = _setting(
        "SYNC_IDLE_TIMEOUT_SECONDS",
        60.0,
        _float("SYNC_IDLE_TIMEOUT_SECONDS", 5, 86400),
        "a connection that sent nothing this long is closed 1001 (dead peer; "
        "y-websocket clients renew awareness every 15 s)",
    )
    provision_local_admin_url: str | None = _setting(
        "PROVISION_LOCAL_ADMIN_URL",
        None,
        _url("PROVISION_LOCAL_ADMIN_URL", "postgresql", "postgres"),
        "server where the local driver creates dedicated databases (needs CREATEDB); default: DATABASE_URL's server",
    )
    fly_api_token: str | None = _setting("FLY_API_TOKEN", None, doc="Fly.io token for the flyio driver", secret=True)
    fly_api_url: str = _setting(
        "FLY_API_URL", "https://api.machines.dev", _url("FLY_API_URL", "http", "https"), "Fly Machines API base URL"
    )
    fly_org: str = _setting("FLY_ORG", "personal", doc="Fly organization slug new apps are created in")
    hcloud_token: str | None = _setting(
        "HCLOUD_TOKEN", None, doc="Hetzner Cloud token for the hetzner driver", secret=True
    )
    hcloud_api_url: str = _setting(
        "HCLOUD_API_URL",
        "https://api.hetzner.cloud/v1",
        _url("HCLOUD_API_URL", "http", "https"),
        "Hetzner Cloud API base URL",
    )
    migration_cleanup_grace: float = _setting(
        "MIGRATION_CLEANUP_GRACE_SECONDS",
        3600.0,
        _float("MIGRATION_CLEANUP_GRACE_SECONDS", 0, 30 * 86400),
        "after a tenant migration, how long the source copy is kept before it is deleted",
    )

    # Several nodes (REDIS_URL set): see sync_server/extensions/fanout.py and sync_server/extensions/shared_limits.py.
    redis_prefix: str = _setting(
        "REDIS_PREFIX",
        "webhost:",
        _text("REDIS_PREFIX"),
        "prefix of every Redis key of this deployment (nodes sharing documents share it)",
    )
    node_id: str | None = _setting(
        "NODE_ID",
        None,
        _text("NODE_ID"),
        "name of this node in Redis; unset: host name, process id and a random suffix",
    )
    node_heartbeat_seconds: float = _setting(
        "NODE_HEARTBEAT_SECONDS",
        2.0,
        _float("NODE_HEARTBEAT_SECONDS", 0.1, 60),
        "nodes beat this often; one silent for 3 beats is dead (its presence and connection counts are dropped)",
    )
    cluster_pause_ack: float = _setting(
        "CLUSTER_PAUSE_ACK_SECONDS",
        5.0,
        _float("CLUSTER_PAUSE_ACK_SECONDS", 0.1, 300),
        "a tenant migration waits this long for every live node to confirm it paused the customer's "
        "writes; a node that does not fails the migration (before the switch)",
    )
    cluster_pause_lease: float = _setting(
        "CLUSTER_PAUSE_LEASE_SECONDS",
        30.0,
        _float("CLUSTER_PAUSE_LEASE_SECONDS", 1, 3600),
        "a node paused for another node's tenant migration resumes by itself after this long (the "
        "migrating node died); a migration that could not switch well inside it fails instead",
    )
    fanout_stream_maxlen: int = _setting(
        "FANOUT_STREAM_MAXLEN",
        1000,
        _int("FANOUT_STREAM_MAXLEN", 50, 10_000_000),
        "entries kept (approximately) in each document's Redis stream",
    )
    connection_limits: str = _setting(
        "CONNECTION_LIMITS",
        "enforce",
        _choice("CONNECTION_LIMITS", "enforce", "off"),
        "enforce the plan's connection_limit per customer (across nodes with Redis)",
    )
    app_session_ttl: int = _setting(
        "APP_SESSION_TTL_SECONDS",
        43200,
        _int("APP_SESSION_TTL_SECONDS", 60, 30 * 86400),
        "lifetime of a customer user's sign-in to the dispatcher app (/app/)",
    )
    app_sync_token_ttl: int = _setting(
        "APP_SYNC_TOKEN_TTL_SECONDS",
        600,
        _int("APP_SYNC_TOKEN_TTL_SECONDS", 30, 86400),
        "lifetime of the sync tokens the dispatcher app gets for its session (it renews them at half)",
    )
    map_tile_url: str = _setting(
        "MAP_TILE_URL",
        "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
        _text("MAP_TILE_URL"),
        "the dispatcher app's map tiles ({z}/{x}/{y} template); `none`: no tiles (a plain background)",
    )
    map_attribution: str = _setting(
        "MAP_ATTRIBUTION",
        '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors',
        _text("MAP_ATTRIBUTION"),
        "the attribution the tile provider requires (HTML, shown on the map)",
    )
    vehicle_stale_minutes: float = _setting(
        "VEHICLE_STALE_MINUTES",
        5.0,
        _float("VEHICLE_STALE_MINUTES", 0.1, 10_000),
        "the app marks a vehicle stale after this long without a fix",
    )
    vehicle_offline_minutes: float = _setting(
        "VEHICLE_OFFLINE_MINUTES",
        60.0,
        _float("VEHICLE_OFFLINE_MINUTES", 0.1, 100_000),
        "the app marks a vehicle offline after this long without a fix",
    )
    rest_rate_limit: int = _setting(
        "REST_RATE_LIMIT_PER_MINUTE",
        6000,
        _int("REST_RATE_LIMIT_PER_MINUTE", 0, 10_000_000),
        "REST requests per credential per minute (across nodes with Redis); past it 429 with Retry-After; 0 disables",
    )

    # Webhooks (sync_server/domain/webhooks): the delivery worker of every node.
    webhook_allow_private_urls: bool = _setting(
        "WEBHOOK_ALLOW_PRIVATE_URLS",
        False,
        _bool("WEBHOOK_ALLOW_PRIVATE_URLS"),
        "allow webhook URLs that resolve to loopback, private, link-local or other non-public addresses "
        "(refused by default, when created and at every delivery: SSRF); tests and local development set it",
    )
    webhook_concurrency: int = _setting(
        "WEBHOOK_CONCURRENCY",
        16,
        _int("WEBHOOK_CONCURRENCY", 1, 1024),
        "webhook deliveries in flight at once per node",
    )
    webhook_poll_seconds: float = _setting(
        "WEBHOOK_POLL_SECONDS",
        1.0,
        _float("WEBHOOK_POLL_SECONDS", 0.01, 60),
        "how often an idle delivery worker looks for due webhook deliveries",
    )
    webhook_connect_timeout: float = _setting(
        "WEBHOOK_CONNECT_TIMEOUT_SECONDS",
        5.0,
        _float("WEBHOOK_CONNECT_TIMEOUT_SECONDS", 0.1, 60),
        "a webhook receiver must accept the connection within this time",
    )
    webhook_timeout: float = _setting(
        "WEBHOOK_TIMEOUT_SECONDS",
        15.0,
        _float("WEBHOOK_TIMEOUT_SECONDS", 0.2, 300),
        "a webhook delivery (resolve, connect, send, answer) must finish within this time, else it failed",
    )
    webhook_max_response_bytes: int = _setting(
        "WEBHOOK_MAX_RESPONSE_BYTES",
        64 * 1024,
        _int("WEBHOOK_MAX_RESPONSE_BYTES", 0, 16 * 1024 * 1024),
        "bytes of a receiver's answer read at most (the rest is dropped, the connection closed)",
    )
    webhook_retry_base: float = _setting(
        "WEBHOOK_RETRY_BASE_SECONDS",
        5.0,
        _float("WEBHOOK_RETRY_BASE_SECONDS", 0.01, 3600),
        "first retry delay of a failed webhook delivery; doubles per attempt, with jitter",
    )
    webhook_retry_max_delay: float = _setting(
        "WEBHOOK_RETRY_MAX_DELAY_SECONDS",
        3600.0,
        _float("WEBHOOK_RETRY_MAX_DELAY_SECONDS", 0.01, 86400),
        "longest delay between two attempts of a webhook delivery",
    )
    webhook_retry_window: float = _setting(
        "WEBHOOK_RETRY_WINDOW_SECONDS",
        86400.0,
        _float("WEBHOOK_RETRY_WINDOW_SECONDS", 0.1, 30 * 86400),
        "a webhook delivery still failing this long after it was enqueued is dead-lettered",
    )
    webhook_disable_after: float = _setting(
        "WEBHOOK_DISABLE_AFTER_SECONDS",
        86400.0,
        _float("WEBHOOK_DISABLE_AFTER_SECONDS", 0, 30 * 86400),
        "an endpoint whose every attempt failed for this long (and WEBHOOK_DISABLE_AFTER_FAILURES times) "
        "is disabled, with the reason shown to its owner",
    )
    webhook_disable_after_failures: int = _setting(
        "WEBHOOK_DISABLE_AFTER_FAILURES",
        20,
        _int("WEBHOOK_DISABLE_AFTER_FAILURES", 1, 10**6),
        "failed attempts in a row (over WEBHOOK_DISABLE_AFTER_SECONDS) that disable an endpoint",
    )
    webhook_document_interval: float = _setting(
        "WEBHOOK_DOCUMENT_INTERVAL_SECONDS",
        10.0,
        _float("WEBHOOK_DOCUMENT_INTERVAL_SECONDS", 0.05, 86400),
        "document.updated webhooks: at most one per document per this interval",
    )

    # Stripe as the billing provider (sync_server/domain/billing/stripe_sync.py, stripe_events.py).
    stripe_secret_key: str | None = _setting(
        "STRIPE_SECRET_KEY",
        None,
        doc="Stripe secret API key (sk_live_... / sk_test_... / rk_...): creating a customer or changing its plan "
        "creates/updates its Stripe customer and subscription; unset, billing stays internal",
        secret=True,
    )
    stripe_webhook_secret: str | None = _setting(
        "STRIPE_WEBHOOK_SECRET",
        None,
        doc="signing secret (whsec_...) of the Stripe webhook endpoint POST /api/v1/billing/stripe/webhook; "
        "unset, that route answers 404",
        secret=True,
    )
    stripe_api_base: str = _setting(
        "STRIPE_API_BASE",
        "https://api.stripe.com",
        _url("STRIPE_API_BASE", "https", "http"),
        "base address of the Stripe API (tests and stripe-mock point it elsewhere)",
    )
    stripe_webhook_tolerance: int = _setting(
        "STRIPE_WEBHOOK_TOLERANCE_SECONDS",
        300,
        _int("STRIPE_WEBHOOK_TOLERANCE_SECONDS", 1, 86400),
        "a webhook whose Stripe-Signature timestamp is older than this is refused (replay protection)",
    )
    stripe_past_due_grace: float = _setting(
        "STRIPE_PAST_DUE_GRACE_HOURS",
        168.0,
        _float("STRIPE_PAST_DUE_GRACE_HOURS", 0, 24 * 365),
        "a customer whose payment is past due is suspended after this many hours (0: at once)",
    )
    stripe_sync_interval: float = _setting(
        "STRIPE_SYNC_INTERVAL_SECONDS",
        30.0,
        _float("STRIPE_SYNC_INTERVAL_SECONDS", 0.05, 3600),
        "how often each node retries pushes Stripe refused or missed and applies the billing policy's timers",
    )
    stripe_max_network_retries: int = _setting(
        "STRIPE_MAX_NETWORK_RETRIES",
        2,
        _int("STRIPE_MAX_NETWORK_RETRIES", 0, 10),
        "retries of one Stripe call (connection errors, 409, 5xx) with the same idempotency key, before the "
        "push is left to the next sync round",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = f.metadata["parse"](raw)
        settings = cls(**values)
        return settings._checked()

    def _checked(self) -> Settings:
        if self.workers > 1 and not self.redis_url:
            raise ConfigError(
                f"WORKERS={self.workers} needs REDIS_URL: each worker is a node of its own, and nodes share "
                "documents and presence only through the Redis fan-out (unset WORKERS to run one process)"
            )
        if self.db_pool_min > self.db_pool_max:
            raise ConfigError(f"DB_POOL_MIN ({self.db_pool_min}) must not exceed DB_POOL_MAX ({self.db_pool_max})")
        if self.sync_send_queue_bytes < self.sync_max_message_bytes:
            raise ConfigError(
                f"SYNC_SEND_QUEUE_BYTES ({self.sync_send_queue_bytes}) must be at least "
                f"SYNC_MAX_MESSAGE_BYTES ({self.sync_max_message_bytes}): every relayed update must fit"
            )
        if self.cluster_pause_lease <= self.cluster_pause_ack:
            raise ConfigError(
                f"CLUSTER_PAUSE_LEASE_SECONDS ({self.cluster_pause_lease:g}) must exceed "
                f"CLUSTER_PAUSE_ACK_SECONDS ({self.cluster_pause_ack:g})"
            )
        if self.secret_key is not None and len(self.secret_key) < 32:
            raise ConfigError("SECRET_KEY must be at least 32 characters")
        if self.environment == "production" and self.secret_key is None:
            raise ConfigError("SECRET_KEY must be set when WEBHOST_ENV=production")
        if self.environment == "production" and self.encryption_key is None:
            raise ConfigError(
                "ENCRYPTION_KEY must be set when WEBHOST_ENV=production: it seals the stored database "
                "credentials (make one with `webhost-sync generate-key`, the same on every node)"
            )
        return self

    @property
    def effective_log_format(self) -> str:
        if self.log_format:
            return self.log_format
        return "json" if self.environment == "production" else "console"

    def resolved_secret_key(self) -> str:
        """The signing key: SECRET_KEY, or in development one generated once and kept in DATA_DIR."""
        if self.secret_key:
            return self.secret_key
        return self._kept_key("secret_key", lambda: secrets.token_urlsafe(48))

    def keyring(self) -> Keyring:
        """The keys sealing stored credentials: ENCRYPTION_KEY (+ ENCRYPTION_OLD_KEYS), or in
        development a key generated once and kept in DATA_DIR/encryption_key (nodes sharing a
        database must share it: same DATA_DIR, or set ENCRYPTION_KEY)."""
        from storage.sealing import Keyring, new_key

        primary = self.encryption_key or self._kept_key("encryption_key", new_key)
        return Keyring.from_text(primary, self.encryption_old_keys)

    def _kept_key(self, name: str, make: Callable[[], str]) -> str:
        path = self.data_dir / name
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = make()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process of this DATA_DIR made it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return key

    def app_role(self) -> AppRole:
        """How the serving pools log in and sign their tenant scope (storage.database.AppRole)."""
        from storage import AppRole

        return AppRole.from_secret(self.resolved_secret_key(), self.database_app_password)

    @classmethod
    def documented(cls) -> list[tuple[str, object, str]]:
        """(variable, default, meaning) for every setting."""
        return [(f.metadata["env"], f.default, f.metadata["doc"]) for f in fields(cls)]

    def described(self, env: Mapping[str, str]) -> list[Described]:
        """Every setting as `webhost-sync env` prints it: the value in effect (secrets: only whether
        set; URLs without their password), the default, whether `env` sets it, what it means."""
        out = []
        for f in fields(self):
            name = f.metadata["env"]
            value = getattr(self, f.name)
            if f.metadata["secret"]:
                shown = "(set, hidden)" if value else "(unset)"
            elif isinstance(value, str) and "://" in value:
                shown = _without_password(value)
            else:
                shown = _shown(value)
            if f.name == "log_format" and not value:
                shown = f"{self.effective_log_format} (from WEBHOST_ENV)"
            out.append(Described(name, shown, _shown(f.default), bool(env.get(name)), f.metadata["doc"]))
        return out
