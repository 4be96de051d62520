"""celeriac: an async-native distributed task execution platform built on an actor core.

The public API (see ``docs/api.md``)::

    from celeriac import App

    app = App("shop")

    @app.task
    async def fetch(url: str) -> int: ...

    fetch.delay("https://example.com").get(timeout=10)
"""

from __future__ import annotations

from celeriac.app import App
from celeriac.errors import (
    CeleriacError,
    ConfigurationError,
    ResultTimeout,
    TaskError,
    TaskRevoked,
    UnknownTask,
)
from celeriac.messages import Envelope
from celeriac.tasks.result import Result
from celeriac.tasks.task import Task
from celeriac.worker import Budget, Worker

__all__ = [
    "App",
    "Budget",
    "CeleriacError",
    "ConfigurationError",
    "Envelope",
    "Result",
    "ResultTimeout",
    "Task",
    "TaskError",
    "TaskRevoked",
    "UnknownTask",
    "Worker",
]

__version__ = "0.1.0"
