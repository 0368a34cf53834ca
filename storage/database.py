"""One PostgreSQL database: an asyncpg pool that logs in as the row-level-security bound application
role, and the one place that scopes a transaction to a tenant (or, audited, to the operator).

Tenant isolation is enforced by PostgreSQL, not by code discipline: every pooled connection logs in
as `webhost_app` (not a superuser, member of no role, owns nothing, so `RESET ROLE` leaves it as
itself and `SET ROLE` to anything else fails), and every tenant table carries `FORCE ROW LEVEL
SECURITY` with a policy on `customer_id = webhost_current_customer() OR webhost_is_operator()`.
Those functions trust only a *signed* scope (migration 0080): `tenant()` / `operator()` put
`kind|subject|not-after|HMAC-SHA256` into the transaction-local setting `app.scope`, and the HMAC
key (derived from SECRET_KEY, installed by the owner when a pool opens) sits in a table the
application role cannot read. So SQL running as the application role cannot widen its scope:
set_config of another customer's id, or of 'on', is not signed and shows nothing. A transaction
that never calls tenant()/operator() sees no tenant rows at all.

Connections pass from one use to the next through a lane (_Lane) rather than asyncpg's acquire and
release each time, which cost more CPU than the one statement most uses run.

The URL a Database is given is the owner's (it migrates, and installs the key); the pool logs in
on the same server and database as `webhost_app`, with AppRole.password when one is configured.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg
import structlog

APP_ROLE = "webhost_app"

# How long a signed scope stays valid after it was made (checked against now(), the start of the
# transaction it is used in): long enough for clocks a little apart, short enough that a scope read
# from inside a transaction cannot be replayed for long.
SCOPE_TTL_SECONDS = 300
SCOPE_REUSE_SECONDS = 30  # a reused scope has >= 270 s left when its transaction starts
SCOPE_CACHE_ENTRIES = 10_000

# The tenant_isolation policy reads `customer_id = webhost_current_customer() OR webhost_is_operator()`;
# the OR keeps the planner off every customer_id index, so a query with only the policy scans the
# whole table (all tenants: measured 0.8 ms for 2,650 vehicles, growing with every tenant's rows).
# Tenant-scoped list and count queries repeat the tenant condition with this fragment so that the
# (customer_id, ...) indexes serve them. It adds a condition; the policy still applies unchanged.
# It names the scope's customer without checking the signature (webhost_scope_customer, migration
# 0080): the policy beside it checks that once per query, so the signature is verified once, not twice.
TENANT_ROWS = "customer_id = (SELECT webhost_scope_customer())"

# A read that scopes itself: one statement, one round trip (Database.tenant_read), instead of three
# (BEGIN + scope, the statement, COMMIT). It runs in the implicit transaction of a single
# extended-protocol statement, so `set_config(..., true)` lasts exactly as long as the statement:
# the pooled connection holds no scope afterwards, as after tenant()'s COMMIT.
#
#   SELECT page.* FROM {SCOPED_FROM} (SELECT ... FROM t WHERE {SCOPE_SET} AND {TENANT_ROWS} ...
#                                     ORDER BY ... LIMIT $n) AS page ORDER BY ...
#
# $1 is the signed scope. The order matters and is made by the query's shape, not by luck: the scope
# is set in a subquery kept apart (OFFSET 0: never pulled up or merged), and the row read is a LATERAL
# subquery that refers to its output (SCOPE_SET), so PostgreSQL must produce that one row first and
# only then run the row read (the inner side of a nested loop, parameterized by it). The policy's
# InitPlans (webhost_current_customer(), TENANT_ROWS' webhost_scope_customer()) belong to the
# inner query and are evaluated there on first use, after set_config ran. Had anything read the
# setting earlier it would have found no scope and shown no rows: a wrong order fails closed.
# The inner query must keep its LIMIT (or an OFFSET 0): a subquery without one may be flattened into
# the outer query, where SCOPE_SET would become a join condition and the order would be free again.
# tests/test_tenant_isolation.py checks the plans and the isolation.
SCOPED_FROM = "(SELECT set_config('app.scope', $1, true) AS scope OFFSET 0) AS scope_set CROSS JOIN LATERAL"
SCOPE_SET = "scope_set.scope IS NOT NULL"

_SCOPE_KEY_LABEL = b"webhost-sync database scope key v1"

log = structlog.get_logger("storage.database")
audit = structlog.get_logger("audit")


@dataclass(frozen=True)
class AppRole:
    """How the serving pools log in (as `webhost_app`) and sign their scope.

    `scope_key` is derived from SECRET_KEY (HMAC-SHA256 with a label of its own, so it is never
    the key that signs sync tokens); every node and every database of a deployment uses the same.
    `password` is DATABASE_APP_PASSWORD: None logs in without one (trust/peer, the embedded server)."""

    scope_key: bytes = field(repr=False)
    password: str | None = field(default=None, repr=False)
    # signed scopes by customer id ("*": the operator's): (reuse until, monotonic; scope)
    _signed: dict[str, tuple[float, str]] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @classmethod
    def from_secret(cls, secret_key: str, password: str | None = None) -> AppRole:
        key = hmac.new(secret_key.encode(), _SCOPE_KEY_LABEL, hashlib.sha256).digest()
        return cls(key, password)

    def login_url(self, owner_url: str) -> str:
        """`owner_url` with the application role's user and password (same hosts, database, options)."""
        parts = urlsplit(owner_url)
        hosts = parts.netloc.rpartition("@")[2]
        auth = APP_ROLE + (":" + quote(self.password, safe="") if self.password is not None else "")
        query = urlencode(
            [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("user", "password")]
        )
        return urlunsplit(parts._replace(netloc=f"{auth}@{hosts}", query=query))

    def tenant_scope(self, customer_id: uuid.UUID | str) -> str:
        """The signed scope of one customer; uuid.UUID refuses anything but an id."""
        key = str(customer_id)
        signed = self._signed.get(key)
        if signed is not None and signed[0] > time.monotonic():
            return signed[1]
        return self._sign("tenant", str(uuid.UUID(key)), key)

    def operator_scope(self) -> str:
        signed = self._signed.get("*")
        if signed is not None and signed[0] > time.monotonic():
            return signed[1]
        return self._sign("operator", "*", "*")

    def _sign(self, kind: str, subject: str, key: str) -> str:
        """A scope valid SCOPE_TTL_SECONDS (from a transaction's start), reused for SCOPE_REUSE_SECONDS:
        every transaction of a busy customer asked for a new HMAC before (~20 us of a REST request)."""
        body = f"{kind}|{subject}|{int(time.time()) + SCOPE_TTL_SECONDS}"
        scope = body + "|" + hmac.new(self.scope_key, body.encode(), hashlib.sha256).hexdigest()
        if len(self._signed) >= SCOPE_CACHE_ENTRIES:
            self._signed.clear()
        self._signed[key] = (time.monotonic() + SCOPE_REUSE_SECONDS, scope)
        return scope

    def pads(self) -> tuple[bytes, bytes]:
        """The key's HMAC inner and outer pads: what the database stores (migration 0080)."""
        key = self.scope_key.ljust(64, b"\0")
        return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


class Database:
    """A pool on one database (the shared one, or a customer's dedicated one).

    `dsn` is the owner's URL of that database (what migrates it, and what deployments rows hold);
    the pool itself logs in as the application role (`role.login_url(dsn)`)."""

    def __init__(self, dsn: str, role: AppRole, *, min_size: int = 2, max_size: int = 20, name: str = "shared") -> None:
        self.dsn = dsn
        self.role = role
        self.name = name
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._lane: _Lane | None = None

    async def open(self, *, install_key: bool = True) -> Database:
        """As the owner: install the scope key (and the application role's password when the role
        cannot log in with it yet); then the pool, as the application role, checked once.
        `install_key=False` is for one-off commands on platform tables beside running servers
        (create-operator): they need no scope, and replacing the servers' key with one from another
        SECRET_KEY would leave those servers seeing no tenant rows."""
        if self._pool is None:
            owner = await asyncpg.connect(self.dsn, server_settings={"application_name": "webhost-sync-owner"})
            try:
                if install_key:
                    await _install_scope_key(owner, self.role, self.name)
                try:
                    pool = await self._create_pool()
                except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
                    if self.role.password is None:
                        raise RuntimeError(
                            f"the application role {APP_ROLE} cannot log in to database {self.name!r} ({exc}): "
                            "run `webhost-sync migrate` (it creates the role), set DATABASE_APP_PASSWORD, or let "
                            f"{APP_ROLE} in through pg_hba.conf"
                        ) from exc
                    await _set_app_password(owner, self.role.password)
                    pool = await self._create_pool()
            finally:
                await owner.close()
            try:
                await _check_app_role(pool, self.role if install_key else None, self.name)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
            self._lane = _Lane(pool, max(1, self._max_size // 4))
        return self

    async def _create_pool(self) -> asyncpg.Pool:
        return await asyncpg.create_pool(
            self.role.login_url(self.dsn),
            min_size=self._min_size,
            max_size=self._max_size,
            server_settings={"application_name": "webhost-sync"},
            init=_init_connection,
            reset=_keep_session,
        )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            lane, self._lane = self._lane, None
            if lane is not None:
                await lane.close()  # first: pool.close() waits for every acquired connection
            await pool.close()

    def pool_use(self) -> tuple[int, int, int] | None:
        """(connections open, of them idle, most allowed) of the pool, or None when it is closed.
        Idle counts the lane's parked connections: acquired as far as asyncpg knows, but unused."""
        pool, lane = self._pool, self._lane
        if pool is None:
            return None
        parked = len(lane.idle) if lane is not None else 0
        return pool.get_size(), pool.get_idle_size() + parked, pool.get_max_size()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """One of the pool's connections, through the lane (_Lane): returned to it after the block,
        given back to the pool (reset, rolled back or discarded by asyncpg) after an exception."""
        lane = self._open_lane()
        conn = await lane.take()
        try:
            yield conn
        except BaseException:
            await lane.drop(conn)
            raise
        await lane.put(conn)

    def _open_lane(self) -> _Lane:
        if self._lane is None:
            raise RuntimeError(f"database {self.name!r} is not open")
        return self._lane

    async def _alone(self, method: str, query: str, *args):
        """`conn.<method>(query, *args)` on a connection of the lane: connection() without the
        context manager, for the one-statement reads every REST request makes."""
        lane = self._open_lane()
        conn = await lane.take()
        try:
            result = await getattr(conn, method)(query, *args)
        except BaseException:
            await lane.drop(conn)
            raise
        await lane.put(conn)
        return result

    @asynccontextmanager
    async def tenant(
        self, customer_id: uuid.UUID | str, *, snapshot: bool = False
    ) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that sees only `customer_id`'s rows (the single place the scope is made).
        `snapshot`: read only, every statement sees the same moment (REPEATABLE READ), for a
        consistent export of the customer's data."""
        begin = _begin_with_scope(self.role.tenant_scope(customer_id), snapshot=snapshot)
        async with self.connection() as conn:
            async with _transaction(conn, begin):
                yield conn

    async def tenant_read(self, customer_id: uuid.UUID | str, query: str, *args) -> list[asyncpg.Record]:
        """The rows of one self-scoping statement (SCOPED_FROM; $1 is the scope, the caller's
        arguments follow) run alone in its implicit transaction: one round trip. For reads only:
        a write must be in tenant(), whose transaction covers everything the write checks, or in
        tenant_one when its one statement checks all of it itself."""
        return await self._alone("fetch", _self_scoping(query), self.role.tenant_scope(customer_id), *args)

    async def tenant_one(self, customer_id: uuid.UUID | str, query: str, *args) -> asyncpg.Record | None:
        """The row of one self-scoping statement (as tenant_read) run alone in its implicit
        transaction: one round trip. A write may run here only when everything it checks is read
        inside the same statement, after any lock it needs (a create counted under its quota lock:
        webhost_quota_count, migration 0160)."""
        return await self._alone("fetchrow", _self_scoping(query), self.role.tenant_scope(customer_id), *args)

    @asynccontextmanager
    async def operator(self, reason: str, **context) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that may read across tenants: explicit, and audited in the log."""
        audit.info("operator_access", reason=reason, database=self.name, **context)
        async with self.connection() as conn:
            async with _transaction(conn, _begin_with_scope(self.role.operator_scope())):
                yield conn

    @asynccontextmanager
    async def platform(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction on platform tables (plans, operators, their tokens): no tenant rows visible,
        whatever SQL may have left in the session (the scope is cleared for the transaction)."""
        async with self.connection() as conn:
            async with _transaction(conn, _NO_SCOPE):
                yield conn

    async def set_tenant(self, conn: asyncpg.Connection, customer_id: uuid.UUID | str) -> None:
        """Scope the current transaction of `conn` (one of this pool's) to one customer: for writers
        that batch several customers into one transaction, switching between them."""
        await conn.execute("SELECT set_config('app.scope', $1, true)", self.role.tenant_scope(customer_id))

    async def ping(self) -> None:
        await self._alone("fetchval", "SELECT 1")


class _Lane:
    """Pool connections handed from one use to the next without asyncpg's acquire and release.

    Those cost ~35-60 us of CPU per use (release runs as a Task behind asyncio.shield: extra turns
    of the event loop), and most uses are one statement (a REST request's tenant_read/tenant_one):
    measured 47-51 us for a fetchrow on a held connection, 81-94 us through acquire and release.
    So a connection stays acquired and is parked here between uses, up to `capacity` of them. Rules:
    - waiters first: a connection is parked only while nobody is inside pool.acquire() (waiting on
      an exhausted pool, or for a new connection), otherwise it is released so that the waiter gets it;
    - nothing in a transaction, closed, or used in a block that raised is parked: those go back
      through pool.release, which rolls back, resets or discards them as it always did;
    - a parked connection found dead (the server ended it) is given back and the next one taken.
    What asyncpg does only on release, a parked connection skips until it is released: recycling
    after max_queries, closing after max_inactive_connection_lifetime, expire_connections(), the
    check for leftover listeners. Nothing here uses those; the lane holds at most a quarter of the pool."""

    __slots__ = ("pool", "capacity", "idle", "waiting", "closed")

    def __init__(self, pool: asyncpg.Pool, capacity: int) -> None:
        self.pool = pool
        self.capacity = capacity
        self.idle: list[asyncpg.Connection] = []
        self.waiting = 0  # coroutines inside pool.acquire()
        self.closed = False

    async def take(self) -> asyncpg.Connection:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not _closed(conn):
                return conn
            await self._release_quietly(conn)
        self.waiting += 1
        try:
            return await self.pool.acquire()
        finally:
            self.waiting -= 1

    async def put(self, conn: asyncpg.Connection) -> None:
        if self.waiting or self.closed or len(self.idle) >= self.capacity or _closed(conn) or conn.is_in_transaction():
            await self.pool.release(conn)
        else:
            self.idle.append(conn)

    async def drop(self, conn: asyncpg.Connection) -> None:
        """After an exception in the block that used `conn`: the pool decides what it is worth."""
        await self._release_quietly(conn)

    async def close(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in idle:
            await self._release_quietly(conn)

    async def _release_quietly(self, conn: asyncpg.Connection) -> None:
        try:
            await self.pool.release(conn)
        except Exception:  # asyncpg has terminated it: the pool opens another when it needs one
            pass


def _closed(conn: asyncpg.Connection) -> bool:
    """Closed, or a proxy asyncpg already detached (its connection was terminated and the pool took
    the holder back): every call on such a proxy raises InterfaceError."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


_NO_SCOPE = "BEGIN; SELECT set_config('app.scope', '', true)"


def _self_scoping(query: str) -> str:
    """`query`, when it scopes itself (SCOPED_FROM ... SCOPE_SET); ValueError otherwise."""
    if SCOPED_FROM not in query or SCOPE_SET not in query:
        raise ValueError("only self-scoping statements (SCOPED_FROM ... SCOPE_SET) run without tenant()")
    return query


def _begin_with_scope(scope: str, *, snapshot: bool = False) -> str:
    """BEGIN and the scope setting as one simple-protocol query: one round trip instead of two.
    The simple protocol takes no parameters, so the scope is written into the text; it is made by
    AppRole from a parsed uuid, digits and hex only, nothing that could end the literal."""
    mode = " ISOLATION LEVEL REPEATABLE READ READ ONLY" if snapshot else ""
    return f"BEGIN{mode}; SELECT set_config('app.scope', '{scope}', true)"


@asynccontextmanager
async def _transaction(conn: asyncpg.Connection, begin: str) -> AsyncIterator[None]:
    """`begin` (a BEGIN plus transaction-local settings) ... COMMIT, or ROLLBACK on any exception.
    Like asyncpg's conn.transaction() but its BEGIN carries the settings; a nested
    conn.transaction() inside is refused by asyncpg (none is needed: one transaction per scope)."""
    await conn.execute(begin)
    try:
        yield
    except BaseException:
        try:
            if not conn.is_closed() and conn.is_in_transaction():
                await conn.execute("ROLLBACK")
        except Exception:  # the pool's release rolls back (or discards) the connection instead
            pass
        raise
    await conn.execute("COMMIT")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (RESET ALL, UNLISTEN, unlock): one round trip saved per
    acquire. Safe because nothing here leaves session state on a pooled connection: the signed
    scope is transaction-local, advisory locks transaction-scoped, and an open
    transaction is still rolled back by asyncpg before this runs."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns come back as Python objects and go in from them.
    import json

    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _install_scope_key(owner: asyncpg.Connection, role: AppRole, name: str) -> None:
    """Put the key's pads into webhost_scope_key (owner only; written only when they changed, so
    nodes starting together do not contend). A database not migrated yet has no table: its pool
    then sees no tenant rows until `webhost-sync migrate` ran and the pool is opened again."""
    inner, outer = role.pads()
    try:
        await owner.execute(
            "INSERT INTO webhost_scope_key (only_row, inner_pad, outer_pad) VALUES (true, $1, $2) "
            "ON CONFLICT (only_row) DO UPDATE SET inner_pad = EXCLUDED.inner_pad, outer_pad = EXCLUDED.outer_pad, "
            "installed_at = now() WHERE (webhost_scope_key.inner_pad, webhost_scope_key.outer_pad) "
            "IS DISTINCT FROM (EXCLUDED.inner_pad, EXCLUDED.outer_pad)",
            inner,
            outer,
        )
    except asyncpg.UndefinedTableError:
        log.warning("scope_key_not_installed", database=name, reason="migrations pending")


async def _set_app_password(owner: asyncpg.Connection, password: str) -> None:
    """ALTER ROLE takes no parameters: the password goes in as a quoted literal (quote_literal)."""
    literal = await owner.fetchval("SELECT quote_literal($1::text)", password)
    try:
        await owner.execute(f"ALTER ROLE {APP_ROLE} LOGIN PASSWORD {literal}")
    except asyncpg.InsufficientPrivilegeError as exc:
        raise RuntimeError(
            f"the owner may not set the password of {APP_ROLE} ({exc}): "
            f"ALTER ROLE {APP_ROLE} LOGIN PASSWORD '...' as a role that may, "
            "with the value of DATABASE_APP_PASSWORD"
        ) from exc
    log.info("app_role_password_set", role=APP_ROLE)


async def _check_app_role(pool: asyncpg.Pool, role: AppRole | None, name: str) -> None:
    """Refuse a pool whose role could escape the policies: a superuser, a role that bypasses RLS,
    creates roles or databases, is a member of another role (SET ROLE would work), may create in
    the database or schema public, or owns a table or function here. Then check that a signed
    scope is accepted (the key installed, the clocks within SCOPE_TTL_SECONDS of each other)."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb, r.rolreplication, "
            " EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid) AS member_of_a_role, "
            " has_database_privilege(current_database(), 'CREATE') AS creates_schemas, "
            " has_schema_privilege('public', 'CREATE') AS creates_in_public, "
            " EXISTS (SELECT 1 FROM pg_class c WHERE c.relowner = r.oid AND c.relpersistence <> 't') "
            "  OR EXISTS (SELECT 1 FROM pg_proc p WHERE p.proowner = r.oid) AS owns_objects, "
            " to_regclass('public.webhost_scope_key') IS NOT NULL AS signed_scope "
            "FROM pg_roles r WHERE r.rolname = current_user"
        )
        wrong = [k for k, v in dict(row).items() if k not in ("rolname", "signed_scope") and v]
        if row["rolname"] != APP_ROLE or wrong:
            raise RuntimeError(
                f"database {name!r}: the serving pool logs in as {row['rolname']!r}, which must be "
                f"{APP_ROLE} without {', '.join(wrong) or 'any extra privilege'} "
                "(README: Database roles)"
            )
        if role is None or not row["signed_scope"]:
            return  # no key installed by this pool, or migrations pending (readiness says so)
        async with _transaction(conn, _begin_with_scope(role.operator_scope())):
            accepted = await conn.fetchval("SELECT webhost_is_operator()")
    if not accepted:
        raise RuntimeError(
            f"database {name!r} refuses this node's signed scope: another SECRET_KEY installed "
            f"its key since, or the database's clock is more than {SCOPE_TTL_SECONDS} s ahead"
        )
