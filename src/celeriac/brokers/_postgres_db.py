"""What the PostgreSQL broker and sink share: URL options, schema, pool, listener.

asyncpg is asyncio-only (psycopg 3's async API is too), while celeriac also runs
on trio. :class:`Database` therefore runs every asyncpg coroutine through a
bridge: under asyncio (or uvloop) in the caller's own loop, at no cost; under
any other loop in an asyncio loop on a helper thread that this database owns,
started by :meth:`Database.connect` and stopped by :meth:`Database.close`. One
call is one thread hop each way (about 0.1 ms on a busy VM), whatever the batch size.

Waiting happens in the caller's loop, never in asyncpg's: a LISTEN connection
(opened on the first wait, reopened with bounded backoff after it is lost) turns
each NOTIFY into a call of the owner's ``on_notify``, which wakes waiters through
a cross-thread :class:`~celeriac._notify.Notifier`.

Every table lives in one schema (URL option ``schema``), created on connect if
missing, idempotently and under an advisory lock, with a schema version row.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import anyio
import anyio.to_thread
import asyncpg  # type: ignore[import-untyped]

from celeriac._notify import loop_waker
from celeriac.brokers._url import BackendURL
from celeriac.errors import BrokerError, ConfigurationError

__all__ = ["Database", "quote_ident"]

T = TypeVar("T")

SCHEMA_VERSION = 1

# Options handed to asyncpg unchanged (libpq's names; asyncpg reads them from the DSN).
_PASSTHROUGH = (
    "host",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "application_name",
    "target_session_attrs",
    "passfile",
)

_TABLES = """
CREATE TABLE IF NOT EXISTS {s}.celeriac_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.celeriac_messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused: fences stale receipts
    msg_id text NOT NULL,
    queue text NOT NULL,
    priority smallint NOT NULL DEFAULT 0,
    available_at float8 NOT NULL,       -- unix seconds: the eta, or the end of the lease
    leased boolean NOT NULL DEFAULT false,
    deliveries integer NOT NULL DEFAULT 0,
    body bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS celeriac_messages_claim
    ON {s}.celeriac_messages (queue, priority DESC, id, available_at);
CREATE INDEX IF NOT EXISTS celeriac_messages_due ON {s}.celeriac_messages (queue, available_at);
CREATE TABLE IF NOT EXISTS {s}.celeriac_queues (name text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS {s}.celeriac_revoked (
    seq bigserial UNIQUE,
    id text PRIMARY KEY,
    expires_at float8 NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.celeriac_dead_letters (
    seq bigserial UNIQUE,               -- newest last; a re-dead-lettered id moves up
    id text PRIMARY KEY,
    queue text NOT NULL,
    priority smallint NOT NULL,
    body bytea NOT NULL,
    reason text NOT NULL,
    at float8 NOT NULL,
    deliveries integer NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.celeriac_workers (
    name text PRIMARY KEY,
    info jsonb NOT NULL,
    expires_at float8 NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.celeriac_documents (
    id text PRIMARY KEY,
    state text NOT NULL,
    body bytea NOT NULL,
    expires_at float8                   -- NULL: never
);
CREATE INDEX IF NOT EXISTS celeriac_documents_expiry
    ON {s}.celeriac_documents (expires_at) WHERE expires_at IS NOT NULL
"""

#: the server's clock, in unix seconds, fixed for the whole statement
NOW = "extract(epoch FROM statement_timestamp())::float8"

_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
# Failures that say nothing about the statement: the server is away, restarting, or
# full; the same call may well succeed a moment later.
_TRANSIENT = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization failure
)


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _channel(kind: str, schema: str) -> str:
    name = f"celeriac.{kind}.{schema}"
    if len(name.encode()) <= 63:  # longer names are truncated by the server
        return name
    return f"celeriac.{kind}.{hashlib.sha1(schema.encode()).hexdigest()}"


async def _no_reset(conn: Any) -> None:
    """Pool reset: asyncpg rolls back an open transaction itself; we change no session state."""


class _Bridge:
    """Runs asyncpg's coroutines: in the caller's asyncio loop, or on a helper thread's."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            asyncio.get_running_loop()
            return  # asyncio or uvloop: asyncpg runs right here
        except RuntimeError:
            pass
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread

    async def call(self, factory: Callable[[], Awaitable[T]]) -> T:
        loop = self._loop
        if loop is None:
            return await factory()

        async def job() -> T:
            return await factory()

        future = asyncio.run_coroutine_threadsafe(job(), loop)
        done = anyio.Event()
        wake = loop_waker(done)
        future.add_done_callback(lambda _: wake())
        try:
            await done.wait()
        except BaseException:
            future.cancel()  # cancels the asyncio task in the helper loop
            raise
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise BrokerError(f"{self._name}: closed while a call was under way") from None

    async def stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await loop.shutdown_asyncgens()

        with anyio.CancelScope(shield=True):
            future = asyncio.run_coroutine_threadsafe(cancel_all(), loop)
            try:
                await anyio.to_thread.run_sync(future.result, 5.0)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                pass  # stop the loop anyway; what still runs there is abandoned
            loop.call_soon_threadsafe(loop.stop)
            await anyio.to_thread.run_sync(thread.join)
        loop.close()


class Database:
    """A pool of asyncpg connections to one schema, plus a lazily opened LISTEN connection.

    ``kind`` names the notification channel (``"m"`` messages, ``"d"``
    documents); ``on_notify(payload)`` is called for each notification on it, in
    asyncpg's loop (maybe another thread), and with ``None`` whenever
    notifications may have been missed (the listener was lost or reopened).
    """

    def __init__(
        self, parsed: BackendURL, kind: str, on_notify: Callable[[str | None], None]
    ) -> None:
        self.schema = parsed.text("schema", "celeriac")
        if not self.schema or len(self.schema.encode()) > 63 or "\x00" in self.schema:
            raise ConfigurationError(f"{parsed.url!r}: option schema must be 1-63 bytes")
        #: the schema, quoted, to prefix table names in SQL
        self.s = quote_ident(self.schema)
        self.channel = _channel(kind, self.schema)
        self.pool_size = parsed.integer("pool_size", 10, minimum=1)
        self.connect_timeout = parsed.number("connect_timeout", 5.0, minimum=0.1)
        self.command_timeout = parsed.number("command_timeout", 30.0, minimum=0.1)
        #: the longest a waiting fetch or wait goes without looking at the tables
        self.poll_interval = parsed.number("poll_interval", 1.0, minimum=0.01)
        self._dsn, self.display = _dsn(parsed)
        self._on_notify = on_notify
        self._bridge = _Bridge(f"celeriac-postgres {self.display}")
        self._pool: Any = None
        self._listener: Any = None
        self._listen_lock: asyncio.Lock | None = None
        self._retry_at = 0.0
        self._backoff = 0.0

    # -- lifecycle --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Start the bridge, open the pool and create the schema if missing."""
        if self._pool is not None:
            return
        self._listen_lock, self._retry_at, self._backoff = None, 0.0, 0.0
        self._bridge.start()
        try:
            await self._bridge.call(self._open)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._bridge.stop()
            raise

    async def _open(self) -> None:
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                # No floor: asyncpg would keep it with a background task that logs a
                # traceback per attempt while the server is down. Connections open on
                # demand, and idle ones close after five minutes.
                min_size=0,
                max_size=self.pool_size,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                reset=_no_reset,
                # Our statements are prepared once per connection and their best plan
                # does not depend on the arguments: skip planning them on each call
                # (for the claim, planning costs more than running it).
                server_settings={"plan_cache_mode": "force_generic_plan"},
            )
        except _ERRORS as exc:
            raise BrokerError(f"{self.display}: cannot connect: {exc}") from exc
        try:
            async with pool.acquire() as conn, conn.transaction():
                await self._setup(conn)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, _ERRORS):
                raise BrokerError(f"{self.display}: cannot create the schema: {exc}") from exc
            raise
        self._pool = pool

    async def _setup(self, conn: Any) -> None:
        # The advisory lock makes concurrent first connects wait instead of racing on DDL.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"celeriac:{self.schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.s}")
        await conn.execute(_TABLES.format(s=self.s))  # no arguments: one multi-statement script
        version = await conn.fetchval(
            f"INSERT INTO {self.s}.celeriac_meta (key, value) VALUES ('schema', $1)"
            " ON CONFLICT (key) DO UPDATE SET value = celeriac_meta.value RETURNING value",
            str(SCHEMA_VERSION),
        )
        if int(version) > SCHEMA_VERSION:
            raise BrokerError(
                f"{self.display}: schema {self.schema!r} has version {version}, newer than"
                f" this celeriac's ({SCHEMA_VERSION}); upgrade celeriac"
            )

    async def close(self) -> None:
        """Close the pool and the listener, then stop the bridge."""
        with anyio.CancelScope(shield=True):
            if self._pool is not None:
                try:
                    await self._bridge.call(self._shut)
                except BrokerError:
                    pass
            await self._bridge.stop()

    async def _shut(self) -> None:
        pool, listener = self._pool, self._listener
        self._pool = self._listener = None
        if listener is not None:
            listener.terminate()
        if pool is not None:
            try:
                async with asyncio.timeout(5.0):
                    await pool.close()
            except (TimeoutError, *_ERRORS):
                pool.terminate()

    # -- statements ---------------------------------------------------------------------------

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``await fn(connection)`` on a pooled connection; client errors become BrokerError."""
        return await self._bridge.call(lambda: self._with_connection(fn))

    async def _with_connection(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        pool = self._pool
        if pool is None:
            raise BrokerError(f"{self.display}: not connected")
        try:
            async with pool.acquire(timeout=self.connect_timeout) as conn:
                return await fn(conn)
        except _ERRORS as exc:
            raise BrokerError(f"{self.display}: {type(exc).__name__}: {exc}") from exc

    async def run_until(
        self, fn: Callable[[Any], Awaitable[T]], deadline: float, *, shield: bool = False
    ) -> T:
        """:meth:`run`, retried with bounded backoff after transient failures until ``deadline``.

        For calls that are safe to repeat and wait anyway (a fetch, a sink's wait):
        a server restarting under them costs them time, not an error. ``deadline``
        is in :func:`anyio.current_time`; ``shield`` protects each attempt (not the
        pauses between them) from cancellation.
        """
        delay = 0.05
        while True:
            try:
                with anyio.CancelScope(shield=shield):
                    return await self.run(fn)
            except BrokerError as exc:
                if not isinstance(exc.__cause__, _TRANSIENT):
                    raise
                if anyio.current_time() + delay > deadline:
                    raise
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- notifications ------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up (notifications arrive)."""
        return self._listener is not None

    async def listen(self) -> None:
        """Open the LISTEN connection if it is down and its backoff has passed.

        Never raises for a server that cannot be reached: waiters then poll every
        :attr:`poll_interval` until a later call gets the listener back.
        """
        if self._listener is None and self._pool is not None and time.monotonic() >= self._retry_at:
            await self._bridge.call(self._listen)

    async def _listen(self) -> None:
        if self._listen_lock is None:
            self._listen_lock = asyncio.Lock()
        async with self._listen_lock:
            if self._listener is not None or self._pool is None:
                return
            conn = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self.connect_timeout)
                await conn.add_listener(self.channel, self._notified)
            except BaseException as exc:
                if conn is not None:
                    conn.terminate()
                if not isinstance(exc, _ERRORS):
                    raise
                self._backoff = min(max(self._backoff * 2, 0.05), 2.0)
                self._retry_at = time.monotonic() + self._backoff
                return
            conn.add_termination_listener(self._lost)
            if self._pool is None:  # closed meanwhile
                conn.terminate()
                return
            self._listener, self._backoff = conn, 0.0
        self._on_notify(None)  # whatever was sent before LISTEN took effect: look again

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._on_notify(payload)

    def _lost(self, conn: Any) -> None:
        if self._listener is conn:
            self._listener = None
            self._on_notify(None)


def _dsn(parsed: BackendURL) -> tuple[str, str]:
    """The DSN for asyncpg (celeriac's options removed) and a password-free form for messages."""
    kept = {name: value for name in _PASSTHROUGH if (value := parsed.text(name, "")) != ""}
    kept.setdefault("application_name", "celeriac")
    parts = urlsplit(parsed.url)
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(kept), ""))
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(":" + parts.password + "@", ":***@", 1)
    return dsn, urlunsplit((parts.scheme, netloc, parts.path, "", ""))
