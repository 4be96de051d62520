"""Plumbing shared by the Redis broker and sink: URL options, the client, the loop.

:class:`RedisConnection` owns one ``redis.asyncio`` client (a blocking connection
pool) and runs every operation through :meth:`RedisConnection.run`, which

* retries what failed because the server could not be reached (refused, reset,
  timed out, still loading its data after a restart), reconnecting with a
  backoff of 0, 0.05, 0.1 ... 1 s, for at most ``retry_timeout`` seconds, then
  raises :class:`~celeriac.errors.BrokerError`;
* translates every other client error into :class:`~celeriac.errors.BrokerError`
  (cancellation is never wrapped);
* under trio, where ``redis.asyncio`` cannot run, hands the operation to a
  private asyncio loop in a thread of this connection's own, started by
  :meth:`RedisConnection.open` and stopped by :meth:`RedisConnection.close`.
  Cancelling the trio caller cancels the operation in that loop and waits for it
  to unwind, so an operation's clean-up (giving back claimed messages) runs
  before the caller sees its cancellation.

Operations are coroutine functions ``fn(client, *args)`` written with anyio, so
the same code runs in the caller's asyncio loop or in the private loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import redis.asyncio as aioredis
import redis.exceptions as rexc
import sniffio
from redis.backoff import NoBackoff
from redis.retry import Retry

from celeriac._notify import loop_waker
from celeriac.brokers._url import BackendURL
from celeriac.errors import BrokerError, ConfigurationError

__all__ = ["RedisConnection", "RedisOptions"]

log = logging.getLogger("celeriac.redis")

T = TypeVar("T")

#: errors after which the same operation is tried again on a fresh connection
_UNREACHABLE = (rexc.ConnectionError, rexc.TimeoutError)
_BACKOFF_START, _BACKOFF_CAP = 0.05, 1.0


class RedisOptions:
    """What a ``redis://`` or ``rediss://`` URL says, checked (see ``docs/brokers.md``)."""

    def __init__(self, parsed: BackendURL) -> None:
        self.tls = parsed.scheme == "rediss"
        self.host = parsed.host or "127.0.0.1"
        self.port = parsed.port or 6379
        path = parsed.path.strip("/")
        try:
            self.db = int(path) if path else 0
        except ValueError:
            raise ConfigurationError(
                f"{parsed.url!r}: the path names a database number (redis://host:6379/0)"
            ) from None
        self.username = parsed.username
        self.password = parsed.password
        self.prefix = parsed.text("prefix", "celeriac")
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ConfigurationError(f"{parsed.url!r}: option prefix must be a non-empty word")
        self.socket_timeout = parsed.number("socket_timeout", 10.0, minimum=1.0)
        self.connect_timeout = parsed.number("connect_timeout", 5.0, minimum=0.1)
        self.retry_timeout = parsed.number("retry_timeout", 10.0)
        self.max_connections = parsed.integer("max_connections", 64, minimum=2)
        self.ssl_cert_reqs = "required"
        self.ssl_ca_certs: str | None = None
        if self.tls:
            self.ssl_cert_reqs = parsed.choice(
                "ssl_cert_reqs", "required", ("required", "optional", "none")
            )
            self.ssl_ca_certs = parsed.text("ssl_ca_certs", "") or None

    def client(self) -> aioredis.Redis:
        """A new client (no connection is made until it is used)."""
        extra: dict[str, Any] = {}
        if self.tls:
            extra = {
                "connection_class": aioredis.SSLConnection,
                "ssl_cert_reqs": self.ssl_cert_reqs,
                "ssl_ca_certs": self.ssl_ca_certs,
            }
        # A plain pool: cheaper per call than the blocking one. When all its
        # connections are busy it raises a ConnectionError, which RedisConnection
        # retries with backoff, so a burst waits (bounded) rather than fails.
        pool = aioredis.ConnectionPool(
            max_connections=self.max_connections,
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=self.password,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.connect_timeout,
            socket_keepalive=True,
            # Our own loop in RedisConnection.run retries, with a bound in time.
            retry=Retry(NoBackoff(), 0),
            client_name="celeriac",
            **extra,
        )
        return aioredis.Redis.from_pool(pool)  # the client owns and closes the pool

    @property
    def address(self) -> str:
        """``host:port/db`` for messages (never the password)."""
        return f"{self.host}:{self.port}/{self.db}"


class _LoopThread:
    """A private asyncio loop in a thread: where ``redis.asyncio`` runs under trio."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` in the private loop; cancellable from the caller's loop."""
        scope: list[anyio.CancelScope] = []
        cancelled = False

        async def runner() -> T:
            if cancelled:
                raise _Cancelled
            with anyio.CancelScope() as inner:
                scope.append(inner)
                return await fn(*args)
            raise _Cancelled  # the scope was cancelled from the caller's side

        def cancel() -> None:  # runs in the private loop, so never races runner()
            nonlocal cancelled
            cancelled = True
            if scope:
                scope[0].cancel()

        done = anyio.Event()
        wake = loop_waker(done)
        # A fresh context: the caller's says "trio" to sniffio, and so to anyio.
        future = contextvars.Context().run(asyncio.run_coroutine_threadsafe, runner(), self.loop)
        future.add_done_callback(lambda _: wake())
        try:
            await done.wait()
        except BaseException:
            self.loop.call_soon_threadsafe(cancel)
            with anyio.CancelScope(shield=True):
                await done.wait()
            raise
        return future.result()

    async def stop(self) -> None:
        """Stop the loop (cancelling what still runs in it) and join the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._thread.join)


class _Cancelled(Exception):
    """The private loop's part of an operation the caller cancelled."""


class RedisConnection:
    """One client for one URL, usable from asyncio and trio (see the module docstring)."""

    def __init__(self, url: str, options: RedisOptions) -> None:
        self.url = url
        self.options = options
        self._client: aioredis.Redis | None = None
        self._thread: _LoopThread | None = None

    @property
    def client(self) -> aioredis.Redis:
        """The open client (raises BrokerError when closed)."""
        if self._client is None:
            raise BrokerError(f"{self.options.address}: the connection is closed")
        return self._client

    async def open(self) -> None:
        """Make the client (in a private loop under trio) and check the server answers."""
        if self._client is not None:
            return
        if sniffio.current_async_library() != "asyncio":
            self._thread = _LoopThread(f"celeriac-redis {self.options.address}")
        self._client = await self._in_loop(self._make)
        try:
            await self.run(lambda client: client.ping())
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise

    async def _make(self) -> aioredis.Redis:
        return self.options.client()

    async def close(self) -> None:
        """Close the client's connections and stop the private loop, if any."""
        client, self._client = self._client, None
        try:
            if client is not None:
                with anyio.CancelScope(shield=True):
                    await self._in_loop(client.aclose)
        except Exception as exc:  # closing a broken connection: nothing left to do
            log.debug("closing %s: %r", self.options.address, exc)
        finally:
            thread, self._thread = self._thread, None
            if thread is not None:
                await thread.stop()

    async def _in_loop(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._thread is None:
            return await fn(*args)
        try:
            return await self._thread.call(fn, *args)
        except (_Cancelled, concurrent.futures.CancelledError):  # the loop was stopped
            raise BrokerError(f"{self.options.address}: the connection is closed") from None

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(client, *args)``, retried while the server is unreachable.

        A caller that must not lose the result of ``fn`` when cancelled (claimed
        messages) shields this call and cleans up after it: the shield then
        covers the private loop's part too.
        """
        return await self._in_loop(self._attempts, fn, args)

    async def _attempts(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
        client = self.client
        deadline = time.monotonic() + self.options.retry_timeout
        delay = 0.0
        while True:
            try:
                return await fn(client, *args)
            except _UNREACHABLE as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerError(f"{self.options.address}: unreachable: {exc}") from exc
                log.debug(
                    "%s unreachable (%r), retrying in %.2fs", self.options.address, exc, delay
                )
                await anyio.sleep(min(delay, left))
                delay = min(max(delay * 2, _BACKOFF_START), _BACKOFF_CAP)
                client = self.client
            except rexc.RedisError as exc:
                raise BrokerError(f"{self.options.address}: {exc}") from exc
