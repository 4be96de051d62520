"""Broker backends, resolved from a URL by one scheme registry.

``open_broker("sqlite:///celeriac.db", hub)`` makes a broker (not yet connected).
Built-in schemes: ``memory://[name]`` and ``sqlite:///path.db``; ``redis://``,
``amqp://``, ``nats://`` and ``postgresql://`` are resolved here too, imported only
when used. Third-party backends register under the ``celeriac.brokers`` entry
point group (see ``docs/brokers.md``).
"""

from __future__ import annotations

from celeriac.abc import Broker
from celeriac.brokers._hub import Hub
from celeriac.brokers._registry import Builtin, SchemeRegistry

__all__ = ["Hub", "broker_schemes", "open_broker"]

_BROKERS: SchemeRegistry[Broker] = SchemeRegistry(
    "broker",
    "celeriac.brokers",
    {
        "memory": Builtin("celeriac.brokers.memory", "MemoryBroker"),
        "sqlite": Builtin("celeriac.brokers.sqlite", "SqliteBroker"),
        "redis": Builtin("celeriac.brokers.redis", "RedisBroker", "redis"),
        "rediss": Builtin("celeriac.brokers.redis", "RedisBroker", "redis"),
        "amqp": Builtin("celeriac.brokers.amqp", "AmqpBroker", "amqp"),
        "amqps": Builtin("celeriac.brokers.amqp", "AmqpBroker", "amqp"),
        "nats": Builtin("celeriac.brokers.nats", "NatsBroker", "nats"),
        "postgresql": Builtin("celeriac.brokers.postgres", "PostgresBroker", "postgres"),
        "postgres": Builtin("celeriac.brokers.postgres", "PostgresBroker", "postgres"),
    },
)


def open_broker(url: str, hub: Hub) -> Broker:
    """A new broker for ``url``, not yet connected (``await broker.connect()``).

    ``hub`` is the App's :class:`Hub`: in-memory brokers of one hub share state.
    Raises :class:`~celeriac.errors.ConfigurationError` for an unknown scheme, a
    backend whose client is not installed, or a bad option.
    """
    return _BROKERS.open(url, hub)


def broker_schemes() -> list[str]:
    """The URL schemes a broker can be opened with here (built-in and plugins)."""
    return _BROKERS.schemes()
