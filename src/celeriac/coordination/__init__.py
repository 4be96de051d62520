"""Coordination backends (:class:`~celeriac.abc.Coordinator`), resolved from a URL.

``open_coordinator("redis://127.0.0.1:6379/0", hub)`` makes a coordinator (not yet
connected) that keeps counters, tallies, claims, leased semaphores and GCRA rate
limits on that store, for the scheduler and the canvas. Built-in schemes, each
on the same URL as the broker of that name: ``memory://[name]``,
``sqlite:///path.db``, ``redis://`` (``rediss://``) and ``postgresql://``
(``postgres://``). NATS and RabbitMQ have none: an App on ``nats://`` or
``amqp://`` must name a coordinator URL of one of the others. Third-party
coordinators register under the ``celeriac.coordinators`` entry point group (a
callable ``(url, hub) -> Coordinator``, like brokers). See ``docs/coordination.md``.
"""

from __future__ import annotations

from celeriac.abc import Coordinator
from celeriac.brokers._hub import Hub
from celeriac.brokers._registry import Builtin, SchemeRegistry
from celeriac.brokers._url import scheme_of
from celeriac.errors import ConfigurationError

__all__ = ["coordinator_schemes", "open_coordinator"]

_COORDINATORS: SchemeRegistry[Coordinator] = SchemeRegistry(
    "coordinator",
    "celeriac.coordinators",
    {
        "memory": Builtin("celeriac.coordination.memory", "MemoryCoordinator"),
        "sqlite": Builtin("celeriac.coordination.sqlite", "SqliteCoordinator"),
        "redis": Builtin("celeriac.coordination.redis", "RedisCoordinator", "redis"),
        "rediss": Builtin("celeriac.coordination.redis", "RedisCoordinator", "redis"),
        "postgresql": Builtin("celeriac.coordination.postgres", "PostgresCoordinator", "postgres"),
        "postgres": Builtin("celeriac.coordination.postgres", "PostgresCoordinator", "postgres"),
    },
)

# Brokers with no coordinator of their own (yet): say what to do instead.
_BROKER_ONLY = {"nats", "amqp", "amqps"}


def open_coordinator(url: str, hub: Hub) -> Coordinator:
    """A new coordinator for ``url``, not yet connected (``await coordinator.connect()``).

    ``hub`` is the App's :class:`~celeriac.brokers.Hub`: ``memory://``
    coordinators of one hub share state. Raises
    :class:`~celeriac.errors.ConfigurationError` for an unknown scheme (``nats://``
    and ``amqp://`` included, unless a plugin provides one), a backend whose client
    is not installed, or a bad option.
    """
    scheme = scheme_of(url)
    if scheme in _BROKER_ONLY and scheme not in _COORDINATORS.schemes():
        raise ConfigurationError(
            f"{scheme}:// keeps no coordination state: name a coordinator URL"
            " (redis://, postgresql://, sqlite:/// or memory://) for global limits,"
            " rate limits, periodic tasks and chords"
        )
    return _COORDINATORS.open(url, hub)


def coordinator_schemes() -> list[str]:
    """The URL schemes a coordinator can be opened with here (built-in and plugins)."""
    return _COORDINATORS.schemes()
