"""What the backend test modules share.

- A namespace of a test's own on each shared service (a key prefix, a schema...),
  as a context manager that yields its URL and deletes what the test left there:
  :func:`redis_namespace`, :func:`nats_namespace`, :func:`postgres_schema`,
  :func:`amqp_namespace`. The broker tests and the worker tests use the same ones.
  An unreachable service skips the test (fails it with CELERIAC_REQUIRE_SERVICES=1).
- :func:`run_in_thread`: an asyncio client from sync code or from a trio test.
- :func:`connected`: backends connected for a block, then closed.
- :func:`running_worker`: a worker for an app in the test's own event loop.
- :func:`returning`: a conformance class's ``broker_url``/``sink_url`` fixture.
- :func:`unavailable`: skip, or fail when services are required.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any, NoReturn, Protocol, TypeVar
from urllib.parse import urlsplit

import anyio
import pytest

from celeriac import App, Worker
from celeriac.testing.conformance import require_service

__all__ = [
    "POSTGRES_URL",
    "amqp_namespace",
    "connected",
    "nats_namespace",
    "postgres_schema",
    "postgres_sql",
    "redis_namespace",
    "returning",
    "run_in_thread",
    "running_worker",
    "side_by_side",
    "unavailable",
]

T = TypeVar("T")

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
NATS_HOST, NATS_PORT = "127.0.0.1", 4222
AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672
POSTGRES_URL = os.environ.get("CELERIAC_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""The shared PostgreSQL database (``CELERIAC_POSTGRES_URL`` to use another)."""


def unavailable(message: str) -> NoReturn:
    """Skip the test for ``message``; fail it instead when CELERIAC_REQUIRE_SERVICES=1."""
    if os.environ.get("CELERIAC_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} and CELERIAC_REQUIRE_SERVICES=1")
    pytest.skip(message)


def run_in_thread(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` to completion on an asyncio loop in a thread of its own.

    Set-up and clean-up with asyncio-only clients serve sync fixtures and tests on
    any event loop alike this way.
    """
    outcome: list[T | BaseException] = []

    async def main() -> T:
        return await fn()

    def run() -> None:
        try:
            outcome.append(asyncio.run(main()))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


# -- backends and workers in a test ------------------------------------------------------


class Connectable(Protocol):
    """A broker or a sink."""

    async def connect(self) -> None: ...
    async def close(self) -> None: ...


C = TypeVar("C", bound=Connectable)


async def _close(backend: Connectable) -> None:
    with anyio.CancelScope(shield=True):
        await backend.close()


@asynccontextmanager
async def connected(*backends: C) -> AsyncIterator[tuple[C, ...]]:
    """Connect ``backends`` in order; close every one connected on the way out."""
    async with AsyncExitStack() as stack:
        for backend in backends:
            await backend.connect()
            stack.push_async_callback(_close, backend)
        yield backends


@asynccontextmanager
async def running_worker(app: App, **options: Any) -> AsyncIterator[Worker]:
    """A worker for ``app`` in this event loop, and ``app`` open, for the block."""
    options.setdefault("grace", 2.0)
    options.setdefault("heartbeat", 0.2)
    worker = app.worker(**options)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        async with app:
            yield worker
        worker.request_stop()
        await worker.wait_stopped()


def returning(fixture: str) -> Any:
    """A fixture method that is the fixture named ``fixture``.

    ``broker_url = returning("redis_url")`` in a :class:`BrokerConformance` subclass
    runs the contract on the URL that the module's ``redis_url`` fixture makes.
    """

    @pytest.fixture
    def alias(self: object, request: pytest.FixtureRequest) -> Any:
        return request.getfixturevalue(fixture)

    return alias


# -- a namespace of a test's own on each shared service ----------------------------------


@contextmanager
def redis_namespace() -> Iterator[str]:
    """A URL on the shared Redis with a key prefix of its own; its keys deleted after."""
    import redis

    require_service("redis", REDIS_HOST, REDIS_PORT)
    prefix = f"celeriac-test-{uuid.uuid4().hex[:12]}"
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix={prefix}"
    finally:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        finally:
            client.close()


@contextmanager
def nats_namespace() -> Iterator[str]:
    """A URL on the shared NATS server with a namespace of its own; its streams deleted after."""
    import nats
    import nats.js.errors

    require_service("nats", NATS_HOST, NATS_PORT)
    namespace = f"t{uuid.uuid4().hex[:12]}"

    async def drop() -> None:
        nc = await nats.connect(f"nats://{NATS_HOST}:{NATS_PORT}")
        try:
            js = nc.jetstream()
            streams = [f"{namespace}_{name}" for name in ("tasks", "delayed", "dead")]
            streams += [f"KV_{namespace}_{name}" for name in ("revoked", "workers", "results")]
            for stream in streams:
                try:
                    await js.delete_stream(stream)
                except nats.js.errors.NotFoundError:
                    pass
        finally:
            await nc.close()

    try:
        yield f"nats://{NATS_HOST}:{NATS_PORT}/?namespace={namespace}"
    finally:
        run_in_thread(drop)


def postgres_sql(statement: str) -> Any:
    """Run one statement on the shared PostgreSQL database and return its first value."""
    import asyncpg  # type: ignore[import-untyped]

    async def go() -> Any:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            return await conn.fetchval(statement)
        finally:
            await conn.close()

    return run_in_thread(go)


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A schema name of its own on the shared database, dropped (with its contents) after."""
    parts = urlsplit(POSTGRES_URL)
    require_service("postgresql", parts.hostname or "127.0.0.1", parts.port or 5432)
    name = f"test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        postgres_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@contextmanager
def amqp_namespace(vhost: str = "") -> Iterator[str]:
    """A URL on the shared RabbitMQ with a namespace of its own, deleted after.

    Each quorum queue holds a few of the server's file handles, and RabbitMQ stops
    accepting connections when they run out: leave nothing behind.
    """
    from celeriac.brokers.amqp import AmqpBroker

    require_service("rabbitmq", AMQP_HOST, AMQP_PORT)
    url = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{vhost}?namespace=t{uuid.uuid4().hex[:12]}"

    async def drop() -> None:
        broker = AmqpBroker(url)
        async with connected(broker):
            await broker.drop_namespace()

    try:
        yield url
    finally:
        run_in_thread(drop)


async def side_by_side(
    proof: Callable[[str, str], Awaitable[None]], urls: Mapping[str, str]
) -> None:
    """Run ``proof(store, url)`` on every store at once; fail naming each store it failed on.

    One store's failure is noted and does not cancel the other's run.
    """
    failures: list[Exception] = []

    async def run(store: str, url: str) -> None:
        try:
            await proof(store, url)
        except Exception as exc:
            exc.add_note(f"on {store}")
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for store, url in urls.items():
            tg.start_soon(run, store, url)
    if failures:
        stores = ", ".join(exc.__notes__[-1] for exc in failures)
        raise ExceptionGroup(f"the proof failed {stores}", failures)
