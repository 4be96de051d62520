"""Fixtures for worker tests: an app on a fresh SQLite file, a worker in this loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import pytest
from tests.apps.basic import make_app

from celeriac import App, Worker


@pytest.fixture
def app(sqlite_url: str) -> App:
    """The basic test app on a fresh SQLite broker."""
    return make_app(sqlite_url)


@asynccontextmanager
async def _running(app: App, **options: Any) -> AsyncIterator[Worker]:
    options.setdefault("grace", 2.0)
    options.setdefault("heartbeat", 0.2)
    worker = app.worker(**options)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        async with app:
            yield worker
        worker.request_stop()
        await worker.wait_stopped()


@pytest.fixture
def running() -> Callable[..., AbstractAsyncContextManager[Worker]]:
    """``async with running(app, **worker_options) as worker:`` a worker in this loop."""
    return _running
