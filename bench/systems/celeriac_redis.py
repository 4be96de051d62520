"""celeriac on Redis, measured with the same workloads as the peers (bench/systems/*_redis.py).

The bench process produces (``App(broker="redis://127.0.0.1:6379/8")``, asyncio with
uvloop), a worker subprocess runs: ``python -m celeriac worker bench.apps:app -Q bench``,
exactly as in the SQLite scenarios. Results go to the Redis sink beside the broker (the
default sink is the broker's URL). Until celeriac has a Redis backend, every scenario
here is FAILED with a one-line reason and the rest of the bench runs.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from bench.apps import NOOP, SLEEP, build
from bench.harness import RunContext, Scenario, Ticker
from bench.systems import redis_common as rc
from bench.systems.celeriac_common import (
    await_all,
    queue_stats,
    run_async,
    start_worker,
    stop_worker,
    watching,
)

__all__ = ["DESCRIPTION", "SCENARIOS"]

SYSTEM = "celeriac"

DESCRIPTION = f"""\
- **Broker and results**: `App("bench", "{rc.redis_url("celeriac")}")`: the Redis broker
  (streams, one consumer group) and, by default, the Redis result sink on the same URL.
- **Worker**: one process, `python -m celeriac worker bench.apps:app -Q bench` (asyncio +
  uvloop), default settings for the no-ops (`async def noop()`); `--async-concurrency
  {rc.IO_IN_FLIGHT}` for the I/O-bound run (`async def sleep(s): await anyio.sleep(s)`), so
  at most {rc.IO_IN_FLIGHT} are in flight, as for every peer.
- **Producer**: `task.delay()` in a plain loop (no await: publishes are batched by the
  publisher actor), then `for r in results: await r`. Enqueue is timed until leaving
  `async with app:`, which flushes the publisher (every message is in Redis).
"""


def _require_backend() -> None:
    """Fail the run at once, with a plain reason, while celeriac has no Redis backend."""
    missing = [
        module
        for module in ("celeriac.brokers.redis", "celeriac.sinks.redis")
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise RuntimeError(f"celeriac has no Redis backend yet ({', '.join(missing)} missing)")
    if importlib.util.find_spec("redis") is None:
        raise RuntimeError("the Redis client is not installed (pip install 'celeriac[redis]')")


def _prepare(ctx: RunContext) -> str:
    _require_backend()
    rc.flush(SYSTEM)
    return rc.redis_url(SYSTEM)


def _enqueue(ctx: RunContext) -> dict[str, float]:
    """Publish N no-ops with no worker running; the clock stops when all are in Redis."""
    url = _prepare(ctx)

    async def main() -> tuple[float, int]:
        app = build(url)
        noop = app.tasks[NOOP]
        async with app:
            started = time.perf_counter()
            for _ in range(rc.ENQUEUE_TASKS):
                noop.delay()
        # Leaving ``async with app`` flushes the publisher: every message is in Redis.
        elapsed = time.perf_counter() - started
        stats = await queue_stats(url)
        return elapsed, stats.ready

    elapsed, queued = run_async(main)
    if queued != rc.ENQUEUE_TASKS:
        raise RuntimeError(f"{rc.ENQUEUE_TASKS} published but {queued} in the queue")
    return {"enqueue": rc.ENQUEUE_TASKS / elapsed}


def _throughput(
    task_name: str,
    count: int,
    args: Sequence[Any] = (),
    worker_args: Sequence[str] = (),
    warm_up: int = rc.WARM_UP_TASKS,
) -> Callable[[RunContext], dict[str, float]]:
    """Publish ``count`` calls as fast as possible, then await every result in turn."""

    def repetition(ctx: RunContext) -> dict[str, float]:
        url = _prepare(ctx)
        worker = start_worker(ctx, url, *worker_args)
        window = rc.Window(worker)

        async def main() -> None:
            app = build(url)
            task = app.tasks[task_name]
            async with app, watching(worker):
                with anyio.fail_after(rc.PHASE_TIMEOUT):
                    await await_all([task.delay(*args) for _ in range(warm_up)])
                ctx.progress(f"worker ready and warmed up ({warm_up} tasks); timing {count:,}")
                window.start()
                results = [task.delay(*args) for _ in range(count)]
                with anyio.fail_after(rc.PHASE_TIMEOUT):
                    await await_all(results, Ticker(ctx, "results", count))
                window.stop()

        run_async(main)
        values = window.values(count)
        values["worker_rss"] = rc.tree_peak_rss_mib(worker.pid)
        stop_worker(worker)
        return values

    return repetition


def _latency(ctx: RunContext) -> dict[str, float]:
    """One call at a time: publish, await its result, next."""
    url = _prepare(ctx)
    worker = start_worker(ctx, url)

    async def main() -> list[float]:
        app = build(url)
        noop = app.tasks[NOOP]
        async with app, watching(worker):
            with anyio.fail_after(rc.PHASE_TIMEOUT):
                for _ in range(rc.LATENCY_WARM_UP):
                    await noop.delay()
            ticker = Ticker(ctx, "round trips", rc.LATENCY_CALLS)
            samples = []
            with anyio.fail_after(rc.PHASE_TIMEOUT):
                for index in range(rc.LATENCY_CALLS):
                    started = time.perf_counter()
                    await noop.delay()
                    samples.append(time.perf_counter() - started)
                    ticker.poll(index)
            return samples

    samples = run_async(main)
    stop_worker(worker)
    return rc.latency_values(samples)


SCENARIOS = [
    Scenario(
        "redis-e2e",
        SYSTEM,
        f"Redis, {rc.E2E_TASKS:,} async no-ops, publish all then await all, 1 worker process",
        tuple(rc.e2e_metrics(celeriac=True)),
        _throughput(NOOP, rc.E2E_TASKS),
        group="redis-e2e",
    ),
    Scenario(
        "redis-enqueue",
        SYSTEM,
        f"Redis, publish {rc.ENQUEUE_TASKS:,} no-ops and flush, no worker",
        tuple(rc.enqueue_metrics()),
        _enqueue,
        group="redis-enqueue",
    ),
    Scenario(
        "redis-io",
        SYSTEM,
        f"Redis, {rc.IO_TASKS:,} async {rc.SLEEP_SECONDS * 1000:.0f} ms sleeps,"
        f" --async-concurrency {rc.IO_IN_FLIGHT}",
        tuple(rc.io_metrics(celeriac=True)),
        _throughput(
            SLEEP,
            rc.IO_TASKS,
            (rc.SLEEP_SECONDS,),
            ("--async-concurrency", str(rc.IO_IN_FLIGHT)),
            warm_up=200,
        ),
        group="redis-io",
    ),
    Scenario(
        "redis-latency",
        SYSTEM,
        f"Redis round trip, one call at a time, {rc.LATENCY_CALLS} calls",
        tuple(rc.latency_metrics(celeriac=True)),
        _latency,
        group="redis-latency",
    ),
]
