"""Dramatiq on Redis with the Results middleware: ``python -m dramatiq bench.peers.dramatiq_app``.

The default middleware, plus ``Results`` (Redis result backend, so the producer can
get each result) and ``AsyncIO`` (so the I/O-bound actor can be ``async def``).
"""

from __future__ import annotations

import asyncio

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware.asyncio import AsyncIO
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from bench.systems.redis_common import redis_url

URL = redis_url("dramatiq")
QUEUE = "bench"

broker = RedisBroker(url=URL)
backend = RedisBackend(url=URL)
broker.add_middleware(Results(backend=backend))
broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_noop", queue_name=QUEUE, store_results=True, max_retries=0)
def noop() -> None:
    """Returns at once (runs in a worker thread)."""


@dramatiq.actor(actor_name="bench_sleep", queue_name=QUEUE, store_results=True, max_retries=0)
async def sleep(seconds: float) -> None:
    """Waits without using the CPU, on the worker's event loop thread (AsyncIO middleware)."""
    await asyncio.sleep(seconds)
