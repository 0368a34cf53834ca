"""Prometheus metrics of this node (`GET /metrics`, api/metrics.py), every name prefixed `webhost_`.

Wired by the composition root (`install`), counted without touching the sync core: the core's
hooks (`change`, `awareness`, `disconnect`, `refused`) feed `SyncCounters`; the update log, the
persistence extension, the tracking pipeline, fan-out and the REST endpoint each expose a counter
or a callback this module reads or sets. Nothing in sync_server/sync imports prometheus_client.

Hot path: a websocket update costs one `change` call here that adds to a few plain ints (no
locks, no label lookups); they become Prometheus counters only when scraped (`_Collector`). Per
transaction, per REST request and per GPS batch the prometheus_client histograms are observed
directly (those paths cost milliseconds anyway).

Cardinality: no label names a customer, a document or a path. Labels are fixed sets: update
origin (websocket, http, remote, server), payload kind, close code (the codes of
sync_server/sync/connection.py plus the peer's own), route *template* and method (the route
table), HTTP status, GPS source (doc, osmand) and rejection reason (filters.REASONS, else
"other"), database (shared, dedicated: every dedicated pool summed). Per-customer views come from
the usage tables and the logs (every line carries the tenant id), not from this endpoint. The
webhook backlog is counted for all customers together (migration 0121's webhost_webhook_backlog).

Multi-node: every node serves its own numbers; Prometheus scrapes each node (it adds `instance`).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from storage import billing_accounts
from sync_server.domain.tracking.filters import REASONS
from sync_server.extensions.persistence import LogBacklog, Persistence
from sync_server.sync.connection import Connection
from sync_server.sync.hooks import HTTP, REMOTE, RoomHooks

if TYPE_CHECKING:
    from sync_server.domain.tracking.pipeline import Batch, Outcome
    from sync_server.sync.rooms import Room

log = structlog.get_logger("sync_server.extensions.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds: group commits run at SYNC_COMMIT_WINDOW_MS (10 ms) plus the transaction
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
ROW_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 20_000)
_REASONS = frozenset(REASONS)
_STRIPE_OUTCOMES = ("applied", "stale", "ignored", "replay", "bad_signature", "bad_payload", "too_large", "other")
DB_REFRESH_SECONDS = 15.0


class SyncCounters(RoomHooks):
    """Plain counters the sync hooks add to (read at scrape time)."""

    def __init__(self) -> None:
        self.from_websocket = 0
        self.from_http = 0
        self.from_remote = 0
        self.from_server = 0  # the server's own edits (the fleet document's live map)
        self.relayed = 0  # update deliveries queued to local peers
        self.update_bytes_in = 0
        self.update_bytes_out = 0
        self.awareness_in = 0
        self.awareness_bytes_in = 0
        self.awareness_bytes_out = 0
        self.closes: dict[str, int] = {}

    async def change(self, room: Room, update: bytes, origin: Any) -> None:
        size = len(update)
        peers = len(room.connections)
        if type(origin) is Connection:
            self.from_websocket += 1
        elif origin is REMOTE:
            self.from_remote += 1
        elif origin is HTTP:
            self.from_http += 1
        else:
            self.from_server += 1
        self.update_bytes_in += size
        self.relayed += peers
        self.update_bytes_out += size * peers

    async def awareness(self, room: Room, frame: bytes, origin: Any) -> None:
        size = len(frame)
        self.awareness_in += 1
        self.awareness_bytes_in += size
        self.awareness_bytes_out += size * len(room.connections)

    async def disconnect(self, room: Room, connection: Connection) -> None:
        self._closed(connection.close_code)

    async def refused(self, code: int, reason: str) -> None:
        self._closed(code)

    def _closed(self, code: int | None) -> None:
        key = "peer" if code is None else str(code)  # None: the client closed or went away
        self.closes[key] = self.closes.get(key, 0) + 1


class Metrics:
    """The node's metrics: its own registry (several runtimes in one test process do not mix)."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.registry = CollectorRegistry(auto_describe=True)
        self.sync = SyncCounters()
        self.persistence: Persistence | None = None
        self.db_stats: dict[str, float] = {}  # from the database, refreshed in the background
        reg = self.registry
        self.commit_seconds = Histogram(
            "webhost_group_commit_seconds",
            "Time of one group-commit transaction of the update log",
            buckets=COMMIT_BUCKETS,
            registry=reg,
        )
        self.commit_rows = Histogram(
            "webhost_group_commit_rows",
            "Updates written by one group-commit transaction",
            buckets=ROW_BUCKETS,
            registry=reg,
        )
        self.rest_seconds = Histogram(
            "webhost_http_request_duration_seconds",
            "REST request latency by route template, method and status",
            ["route", "method", "status"],
            buckets=REST_BUCKETS,
            registry=reg,
        )
        # (route template, method, status) -> its child: labels() validates and locks on every call;
        # the keys are bounded (route templates x methods x statuses), as the labels are
        self._rest_children: dict[tuple[str, str, int], Any] = {}
        self.pipeline_lag = Histogram(
            "webhost_gps_pipeline_lag_seconds",
            "GPS fix received by this node -> its row committed (doc: age of the oldest update not yet "
            "materialized when a batch commits; osmand: request arrival -> commit)",
            ["source"],
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self.gps_batch_points = Histogram(
            "webhost_gps_batch_points",
            "Points in one materialized batch",
            ["source"],
            buckets=ROW_BUCKETS,
            registry=reg,
        )
        self.stream_lag = Histogram(
            "webhost_redis_stream_lag_seconds",
            "Age of a remote update when this node applies it (now minus its Redis stream entry time)",
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self.gps_stored: dict[str, int] = {}
        self.gps_rejected: dict[str, int] = {}
        self.stripe_events: dict[str, int] = {}  # Stripe webhook deliveries by outcome
        ProcessCollector(namespace="webhost", registry=reg)  # webhost_process_resident_memory_bytes, cpu, fds
        reg.register(_Collector(self))

    # -- what the other parts call ------------------------------------------------------------------

    def observe_commit(self, rows: int, seconds: float) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_rows.observe(rows)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        child = self._rest_children.get((route, method, status))
        if child is None:
            child = self._rest_children[(route, method, status)] = self.rest_seconds.labels(route, method, str(status))
        child.observe(seconds)

    def count_rejected(self, rejected: dict[str, int]) -> None:
        """GPS points rejected by reason (the pipeline's, and the tracker posts' before it)."""
        for reason, n in rejected.items():
            key = reason if reason in _REASONS else "other"
            self.gps_rejected[key] = self.gps_rejected.get(key, 0) + n

    def observe_batch(self, batch: Batch, outcome: Outcome) -> None:
        source = batch.source if batch.source in ("doc", "osmand") else "other"
        self.gps_stored[source] = self.gps_stored.get(source, 0) + outcome.stored
        self.count_rejected(outcome.rejected)
        self.gps_batch_points.labels(source).observe(batch.size)
        if batch.received is not None and outcome.stored:
            self.pipeline_lag.labels(source).observe(max(0.0, time.monotonic() - batch.received))

    def count_stripe_event(self, outcome: str) -> None:
        """A Stripe webhook delivery: applied / stale / ignored / replay, or why it was refused."""
        key = outcome if outcome in _STRIPE_OUTCOMES else "other"
        self.stripe_events[key] = self.stripe_events.get(key, 0) + 1

    def observe_stream_lag(self, seconds: float) -> None:
        self.stream_lag.observe(max(0.0, seconds))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- from the database, every DB_REFRESH_SECONDS -------------------------------------------------

    async def refresh_database(self) -> None:
        async with self.runtime.db.platform() as conn:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname IS NOT NULL) AS connections, "
                "current_setting('max_connections')::int AS max_connections, "
                "pg_database_size(current_database()) AS size"
            )
            backlog = await conn.fetchrow("SELECT pending, oldest_seconds FROM webhost_webhook_backlog()")
        stats = {
            "connections": row["connections"],
            "max_connections": row["max_connections"],
            "size": row["size"],
            "webhook_pending": backlog["pending"],
            "webhook_oldest": backlog["oldest_seconds"],
        }
        if self.runtime.billing_provider is not None:
            async with self.runtime.db.operator("metrics_stripe_outbox") as conn:
                outbox = await billing_accounts.outbox_stats(conn)
            stats.update({f"stripe_{k}": v for k, v in outbox.items()})
        self.db_stats = stats

    async def database_loop(self) -> None:
        while True:
            try:
                await self.refresh_database()
            except Exception as exc:  # the database away: the pool metrics and readiness say so
                log.info("metrics_database_refresh_failed", error=repr(exc))
            await asyncio.sleep(DB_REFRESH_SECONDS)


def _counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def _gauge(name: str, doc: str, value: float | None = None, labels: list[str] | None = None) -> GaugeMetricFamily:
    if value is not None:
        return GaugeMetricFamily(name, doc, value=value)
    return GaugeMetricFamily(name, doc, labels=labels)


class _Collector:
    """Everything read at scrape time: the hook counters, the rooms, pools, fan-out, disk."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self):
        return []  # unchecked collector: its families vary with what is configured (Redis, tracking)

    def collect(self):
        rt, s = self.m.runtime, self.m.sync
        rooms = rt.rooms.rooms()
        yield _gauge("webhost_rooms_open", "Documents loaded on this node", len(rooms))
        yield _gauge(
            "webhost_connections_open",
            "Websocket connections open on this node",
            sum(len(r.connections) for r in rooms),
        )
        received = _counter("webhost_updates_received", "Updates applied to a room, by origin", ["origin"])
        for origin, n in (
            ("websocket", s.from_websocket),
            ("http", s.from_http),
            ("remote", s.from_remote),
            ("server", s.from_server),
        ):
            received.add_metric([origin], n)
        yield received
        yield CounterMetricFamily(
            "webhost_updates_relayed", "Update deliveries queued to local websocket peers", value=s.relayed
        )
        log_ = rt.update_log
        yield CounterMetricFamily(
            "webhost_updates_stored", "Updates committed to the update log", value=log_.rows_written
        )
        yield _gauge("webhost_update_log_pending", "Updates waiting for their group commit", log_.pending())
        bytes_in = _counter("webhost_sync_received_bytes", "Payload bytes received by rooms, by kind", ["kind"])
        bytes_in.add_metric(["update"], s.update_bytes_in)
        bytes_in.add_metric(["awareness"], s.awareness_bytes_in)
        yield bytes_in
        bytes_out = _counter("webhost_sync_sent_bytes", "Payload bytes queued to local peers, by kind", ["kind"])
        bytes_out.add_metric(["update"], s.update_bytes_out)
        bytes_out.add_metric(["awareness"], s.awareness_bytes_out)
        yield bytes_out
        closes = _counter("webhost_websocket_closes", "Websocket connections ended, by close code", ["code"])
        for code, n in sorted(s.closes.items()):
            closes.add_metric([code], n)
        yield closes
        yield from self._persistence(rooms)
        yield from self._gps()
        yield from self._fanout(rt)
        worker = getattr(rt, "webhooks", None)
        if worker is not None:
            attempts = _counter(
                "webhost_webhook_attempts", "Webhook delivery attempts of this node, by result", ["result"]
            )
            attempts.add_metric(["delivered"], worker.delivered)
            attempts.add_metric(["failed"], worker.failed)
            yield attempts
        yield from self._stripe(rt)
        yield from self._pools(rt)
        yield from self._disk(rt)

    def _persistence(self, rooms):
        p = self.m.persistence
        if p is None:
            return
        runs = _counter("webhost_compactions", "Document compactions (log rows folded into the snapshot)", ["result"])
        runs.add_metric(["ok"], p.compactions)
        runs.add_metric(["failed"], p.compaction_failures)
        yield runs
        yield CounterMetricFamily("webhost_compacted_rows", "Log rows folded into snapshots", value=p.compacted_rows)
        lengths = [b.rows for b in (r.peek_state(LogBacklog) for r in rooms) if b is not None]
        yield _gauge("webhost_update_log_rows", "Uncompacted log rows of the loaded documents", sum(lengths))
        yield _gauge(
            "webhost_update_log_rows_max", "Longest uncompacted log of a loaded document", max(lengths, default=0)
        )

    def _gps(self):
        stored = _counter("webhost_gps_points_materialized", "GPS points stored as rows, by source", ["source"])
        for source, n in sorted(self.m.gps_stored.items()):
            stored.add_metric([source], n)
        yield stored
        rejected = _counter("webhost_gps_points_rejected", "GPS points rejected, by reason", ["reason"])
        for reason, n in sorted(self.m.gps_rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected

    def _fanout(self, rt):
        fan = getattr(rt, "fanout", None)
        if fan is None:
            return
        yield _gauge(
            "webhost_redis_connected", "1 while the fan-out reader is connected to Redis", float(fan.connected)
        )
        connects = fan.stats["reconnects"]  # counts the first connection too
        yield CounterMetricFamily(
            "webhost_redis_reconnects", "Fan-out reconnections to Redis after a loss", value=max(0, connects - 1)
        )
        entries = _counter("webhost_fanout_entries", "Redis stream entries, by direction", ["direction"])
        entries.add_metric(["published"], fan.stats["published"])
        entries.add_metric(["received"], fan.stats["received"])
        yield entries
        yield CounterMetricFamily(
            "webhost_fanout_resyncs",
            "Documents reloaded from PostgreSQL after a stream gap",
            value=fan.stats["resyncs"],
        )

    def _pools(self, rt) -> Iterator[GaugeMetricFamily]:
        use = _gauge(
            "webhost_db_pool_connections", "Pool connections, by database and state", labels=["database", "state"]
        )
        most = _gauge("webhost_db_pool_max", "Largest pool size allowed, by database", labels=["database"])
        totals: dict[str, list[int]] = {}
        for name, db in [("shared", rt.registry.shared)] + [("dedicated", d) for d in rt.registry.open_dedicated()]:
            stats = db.pool_use()
            if stats is None:
                continue
            size, idle, cap = stats
            t = totals.setdefault(name, [0, 0, 0])
            t[0], t[1], t[2] = t[0] + size - idle, t[1] + idle, t[2] + cap
        for name, (busy, idle, cap) in sorted(totals.items()):
            use.add_metric([name, "in_use"], busy)
            use.add_metric([name, "idle"], idle)
            most.add_metric([name], cap)
        yield use
        yield most
        stats = self.m.db_stats
        if stats:
            yield _gauge(
                "webhost_database_connections",
                "Connections to the shared database's server (pg_stat_activity)",
                stats["connections"],
            )
            yield _gauge(
                "webhost_database_max_connections",
                "max_connections of the shared database's server",
                stats["max_connections"],
            )
            yield _gauge("webhost_database_size_bytes", "Size of the shared database", stats["size"])
            yield _gauge(
                "webhost_webhook_queue_depth",
                "Webhook deliveries waiting (every customer, the shared database)",
                stats["webhook_pending"],
            )
            yield _gauge(
                "webhost_webhook_oldest_pending_seconds",
                "Age of the oldest webhook delivery still waiting",
                stats["webhook_oldest"],
            )

    def _stripe(self, rt):
        provider, events = rt.billing_provider, self.m.stripe_events
        if provider is not None:
            pushes = _counter("webhost_stripe_pushes", "Customer changes pushed to Stripe by this node", ["result"])
            pushes.add_metric(["pushed"], provider.pushed)
            pushes.add_metric(["failed"], provider.push_failures)
            yield pushes
            stats = self.m.db_stats
            if "stripe_pending" in stats:
                yield _gauge(
                    "webhost_stripe_pending_customers",
                    "Customers with a change Stripe does not have yet (all nodes)",
                    stats["stripe_pending"],
                )
                yield _gauge(
                    "webhost_stripe_failing_customers",
                    "Customers whose last push to Stripe failed (retried with backoff)",
                    stats["stripe_failing"],
                )
        if provider is not None or rt.settings.stripe_webhook_secret:
            received = _counter(
                "webhost_stripe_webhook_events", "Stripe webhook deliveries to this node, by outcome", ["outcome"]
            )
            for outcome in _STRIPE_OUTCOMES:
                received.add_metric([outcome], events.get(outcome, 0))
            yield received

    def _disk(self, rt):
        path = Path(rt.settings.data_dir).resolve()
        while not path.exists() and path != path.parent:  # DATA_DIR not made yet: the disk it will be on
            path = path.parent
        try:
            usage = shutil.disk_usage(path)
        except OSError:
            return
        yield _gauge("webhost_disk_free_bytes", "Free bytes on the file system of DATA_DIR", usage.free)
        yield _gauge("webhost_disk_size_bytes", "Size of the file system of DATA_DIR", usage.total)


def install(runtime) -> Metrics:
    """Create the node's metrics and plug them into every part (call once the rooms, tracking and
    fan-out are wired; the REST endpoint takes `metrics.observe_request`)."""
    metrics = Metrics(runtime)
    runtime.metrics = metrics
    runtime.rooms.hooks.add(metrics.sync, priority=1000)  # after the hooks that do the work
    metrics.persistence = next((h for h in runtime.rooms.hooks if isinstance(h, Persistence)), None)
    runtime.update_log.on_transaction = metrics.observe_commit
    runtime.tracking.on_committed(metrics.observe_batch)
    fan = getattr(runtime, "fanout", None)
    if fan is not None:
        fan.on_lag = metrics.observe_stream_lag

    async def start() -> None:
        runtime.spawn(metrics.database_loop(), "metrics-database")

    runtime.on_start(start)
    return metrics
