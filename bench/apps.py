"""The app the benchmark runs: no-op tasks of each kind, on queue ``bench``.

Worker subprocesses load ``bench.apps:app``; its broker comes from
``CELERIAC_BROKER`` (the bench points it at a file in a temporary directory),
and results go beside it. The producer side builds its own App on the same URL
with :func:`build`. Nothing here does real work, so what is measured is
celeriac's own cost per task.

The task functions live at module level (a boxed task is imported by name in
its box process) and are registered under fixed names, so the producer's App
and the worker's App agree without sharing an object.
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio

from celeriac import App

__all__ = ["NOOP", "NOOP_BOXED", "NOOP_SYNC", "QUEUE", "SLEEP", "app", "build"]

QUEUE = "bench"
NOOP = "bench.noop"
NOOP_SYNC = "bench.noop_sync"
NOOP_BOXED = "bench.noop_boxed"
SLEEP = "bench.sleep"


async def noop() -> None:
    """Coroutine kind: returns at once."""


def noop_sync() -> None:
    """Thread kind: returns at once."""


def noop_boxed() -> None:
    """Process kind (registered ``boxed=True``): returns at once, in a box process."""


async def sleep(seconds: float) -> None:
    """I/O-bound stand-in: waits ``seconds`` without using the CPU."""
    await anyio.sleep(seconds)


def build(broker: str | None = None, sinks: Mapping[str, str] | None = None) -> App:
    """The bench App on ``broker`` (default: ``$CELERIAC_BROKER``, else celeriac's default).

    ``sinks`` (default: ``$CELERIAC_SINKS``, else results beside the broker) for brokers
    that keep no results (``amqp://``).
    """
    bench = App("bench", broker, sinks=sinks)
    bench.register(NOOP, noop, queue=QUEUE)
    bench.register(NOOP_SYNC, noop_sync, queue=QUEUE)
    bench.register(NOOP_BOXED, noop_boxed, queue=QUEUE, boxed=True)
    bench.register(SLEEP, sleep, queue=QUEUE)
    return bench


app = build()
