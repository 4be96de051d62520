"""Huey on Redis: ``huey_consumer bench.peers.huey_app.huey`` (or, for greenlet workers,
``python -m bench.peers.huey_gevent bench.peers.huey_app.huey -k greenlet``).

``RedisHuey`` with ``store_none=True`` (a task returning ``None`` still stores a result,
so the producer can wait for it) and ``notify_result=True`` (the producer waits with a
BLPOP on a notification key instead of polling with backoff).
"""

from __future__ import annotations

import time

from huey import RedisHuey

from bench.systems.redis_common import redis_url

URL = redis_url("huey")

huey = RedisHuey("bench", url=URL, store_none=True, notify_result=True)


@huey.task(name="bench.noop")
def noop() -> None:
    """Returns at once."""


@huey.task(name="bench.sleep")
def sleep(seconds: float) -> None:
    """Waits without using the CPU (cooperative in greenlet workers)."""
    time.sleep(seconds)
