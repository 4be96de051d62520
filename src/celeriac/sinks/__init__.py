"""Data sink backends, resolved from a URL by one scheme registry.

``open_sink("sqlite:///celeriac.db", hub)`` makes a sink (not yet connected).
Built-in schemes: ``memory://[name]`` and ``sqlite:///path.db``; ``redis://``,
``nats://`` and ``postgresql://`` are resolved here too, imported only when used.
Third-party sinks register under the ``celeriac.sinks`` entry point group.
"""

from __future__ import annotations

from celeriac.abc import DataSink
from celeriac.brokers._hub import Hub
from celeriac.brokers._registry import Builtin, SchemeRegistry

__all__ = ["open_sink", "sink_schemes"]

_SINKS: SchemeRegistry[DataSink] = SchemeRegistry(
    "sink",
    "celeriac.sinks",
    {
        "memory": Builtin("celeriac.sinks.memory", "MemorySink"),
        "sqlite": Builtin("celeriac.sinks.sqlite", "SqliteSink"),
        "redis": Builtin("celeriac.sinks.redis", "RedisSink", "redis"),
        "rediss": Builtin("celeriac.sinks.redis", "RedisSink", "redis"),
        "nats": Builtin("celeriac.sinks.nats", "NatsSink", "nats"),
        "postgresql": Builtin("celeriac.sinks.postgres", "PostgresSink", "postgres"),
        "postgres": Builtin("celeriac.sinks.postgres", "PostgresSink", "postgres"),
    },
)


def open_sink(url: str, hub: Hub) -> DataSink:
    """A new data sink for ``url``, not yet connected (``await sink.connect()``).

    ``hub`` is the App's :class:`~celeriac.brokers.Hub`: in-memory sinks of one
    hub share state. Raises :class:`~celeriac.errors.ConfigurationError` for an
    unknown scheme, a backend whose client is not installed, or a bad option.
    """
    return _SINKS.open(url, hub)


def sink_schemes() -> list[str]:
    """The URL schemes a sink can be opened with here (built-in and plugins)."""
    return _SINKS.schemes()
