"""Fixtures for worker tests: an app on a fresh SQLite file, a worker in this loop."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
from tests.apps.basic import make_app
from tests.brokers._shared import running_worker

from celeriac import App, Worker


@pytest.fixture
def app(sqlite_url: str) -> App:
    """The basic test app on a fresh SQLite broker."""
    return make_app(sqlite_url)


@pytest.fixture
def running() -> Callable[..., AbstractAsyncContextManager[Worker]]:
    """``async with running(app, **worker_options) as worker:`` a worker in this loop."""
    return running_worker
