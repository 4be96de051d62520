"""Taskiq on Redis (taskiq-redis): ``python -m taskiq worker bench.peers.taskiq_app:broker``.

``BENCH_TASKIQ_BROKER`` picks taskiq-redis's broker: ``stream`` (RedisStreamBroker:
a consumer group, acknowledged after the result is saved; at-least-once, like
celeriac's) or ``list`` (ListQueueBroker: LPUSH/BRPOP, a message taken is gone:
at-most-once). Results go to RedisAsyncResultBackend. uvloop is installed as the event
loop, as celeriac's worker uses it.
"""

from __future__ import annotations

import asyncio
import os

import uvloop
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from bench.systems.redis_common import redis_url

URL = redis_url("taskiq")
QUEUE = "bench"
KIND = os.environ.get("BENCH_TASKIQ_BROKER", "stream")

uvloop.install()

_results: RedisAsyncResultBackend[None] = RedisAsyncResultBackend(URL, result_ex_time=3600)
if KIND == "list":
    broker = ListQueueBroker(URL, queue_name=QUEUE).with_result_backend(_results)
else:
    broker = RedisStreamBroker(URL, queue_name=QUEUE).with_result_backend(_results)


@broker.task(task_name="bench.noop")
async def noop() -> None:
    """Returns at once."""


@broker.task(task_name="bench.sleep")
async def sleep(seconds: float) -> None:
    """Waits without using the CPU."""
    await asyncio.sleep(seconds)
