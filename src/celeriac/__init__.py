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
from celeriac.canvas import GroupFailed, Signature, chain, chord, group
from celeriac.errors import (
    CeleriacError,
    ConfigurationError,
    PoisonMessage,
    ResultTimeout,
    TaskError,
    TaskRevoked,
    TimeLimitExceeded,
    UnknownTask,
)
from celeriac.failures.backoff import Retry
from celeriac.failures.breaker import CircuitBreaker
from celeriac.failures.health import HealthState
from celeriac.failures.sections import optional, poisonous, retry
from celeriac.messages import Envelope
from celeriac.scheduler.limits import Limit, RateLimit
from celeriac.tasks.result import Result
from celeriac.tasks.task import Task
from celeriac.worker import Budget, Worker

__all__ = [
    "App",
    "Budget",
    "CeleriacError",
    "CircuitBreaker",
    "ConfigurationError",
    "Envelope",
    "GroupFailed",
    "HealthState",
    "Limit",
    "PoisonMessage",
    "RateLimit",
    "Result",
    "ResultTimeout",
    "Retry",
    "Signature",
    "Task",
    "TaskError",
    "TaskRevoked",
    "TimeLimitExceeded",
    "UnknownTask",
    "Worker",
    "chain",
    "chord",
    "group",
    "optional",
    "poisonous",
    "retry",
]

__version__ = "0.1.0"
