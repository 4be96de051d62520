"""Isolated broker URLs for worker tests, one factory per backend.

Each factory yields a URL naming a fresh namespace (a file, a key prefix, a
schema...) on the shared service and cleans it up afterwards. A backend whose
server is not reachable is skipped (failed with CELERIAC_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from celeriac.testing.conformance import require_service


def _in_thread(fn: Callable[[], Any]) -> Any:
    """Run an asyncio coroutine factory to completion in a thread of its own."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(asyncio.run(fn()))
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def _need_module(name: str) -> None:
    if importlib.util.find_spec(f"celeriac.brokers.{name}") is None:
        pytest.skip(f"celeriac.brokers.{name} is not built yet")


@contextmanager
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'celeriac.db'}"


@contextmanager
def redis_url(tmp_path: Path) -> Iterator[str]:
    _need_module("redis")
    require_service("Redis", "127.0.0.1", 6379)
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    yield f"redis://127.0.0.1:6379/0?prefix={prefix}"

    async def clean() -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis(host="127.0.0.1", port=6379, db=0)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    _in_thread(clean)


@contextmanager
def postgres_url(tmp_path: Path) -> Iterator[str]:
    _need_module("postgres")
    require_service("PostgreSQL", "127.0.0.1", 5432)
    schema = f"t_{uuid.uuid4().hex[:10]}"
    base = "postgresql://postgres@127.0.0.1:5432/test"
    yield f"{base}?schema={schema}"

    async def drop() -> None:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(base)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    _in_thread(drop)


@contextmanager
def nats_url(tmp_path: Path) -> Iterator[str]:
    _need_module("nats")
    require_service("NATS", "127.0.0.1", 4222)
    from tests.brokers.test_nats import _drop_namespace

    namespace = f"t{uuid.uuid4().hex[:12]}"
    yield f"nats://127.0.0.1:4222/?namespace={namespace}"
    _drop_namespace(namespace)


FACTORIES: dict[str, Callable[[Path], Any]] = {
    "sqlite": sqlite_url,
    "redis": redis_url,
    "postgres": postgres_url,
    "nats": nats_url,
}
