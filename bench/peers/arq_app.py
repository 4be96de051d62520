"""arq on Redis: ``python -m arq bench.peers.arq_app.WorkerSettings``.

arq's worker polls its queue (a sorted set) every ``poll_delay`` seconds and reads up
to ``queue_read_limit`` jobs per poll; both come from the environment so each workload
gets its own (see bench/systems/arq_redis.py). uvloop is installed as the event loop,
as celeriac's worker uses it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import uvloop
from arq.connections import RedisSettings

from bench.systems.redis_common import redis_url

URL = redis_url("arq")
QUEUE = "bench"
REDIS = RedisSettings.from_dsn(URL)

uvloop.install()


async def noop(ctx: dict[str, Any]) -> None:
    """Returns at once."""


async def sleep(ctx: dict[str, Any], seconds: float) -> None:
    """Waits without using the CPU."""
    await asyncio.sleep(seconds)


class WorkerSettings:
    functions = [noop, sleep]
    redis_settings = REDIS
    queue_name = QUEUE
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "100"))
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.5"))
    keep_result = 3600
