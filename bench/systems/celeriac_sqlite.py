"""celeriac on the embedded SQLite broker: the bench process produces, a worker subprocess runs.

Every repetition gets a fresh database file and (except for the enqueue
scenario) a fresh worker subprocess, ``python -m celeriac worker bench.apps:app
-Q bench``, warmed up before the clock starts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio

from bench.apps import NOOP, NOOP_BOXED, NOOP_SYNC, SLEEP, build
from bench.harness import (
    Metric,
    RunContext,
    Scenario,
    Target,
    Ticker,
    cpu_wait_seconds,
    percentile,
)
from bench.systems.celeriac_common import (
    RESULT_TIMEOUT,
    await_all,
    queue_stats,
    run_async,
    sqlite_url,
    start_worker,
    stop_worker,
    watching,
)

__all__ = ["SCENARIOS"]

SYSTEM = "celeriac"

E2E_TASKS = 20_000
LATENCY_CALLS = 500
LATENCY_WARM_UP = 50
WARM_UP_TASKS = 500
THREAD_TASKS = 5_000
BOXED_TASKS = 1_000
SLEEP_TASKS = 2_000
SLEEP_SECONDS = 0.010


def _enqueue(ctx: RunContext) -> dict[str, float]:
    """Publish N no-ops with no worker running; the clock stops when all are in the file."""
    url = sqlite_url(ctx)

    async def main() -> tuple[float, int]:
        app = build(url)
        noop = app.tasks[NOOP]
        async with app:
            started = time.perf_counter()
            for _ in range(E2E_TASKS):
                noop.delay()
        # Leaving ``async with app`` flushes the publisher: every message is committed.
        elapsed = time.perf_counter() - started
        stats = await queue_stats(url)
        return elapsed, stats.ready

    elapsed, queued = run_async(main)
    if queued != E2E_TASKS:
        raise RuntimeError(f"{E2E_TASKS} published but {queued} in the queue")
    return {"enqueue": E2E_TASKS / elapsed}


def _throughput(
    task_name: str,
    count: int,
    args: Sequence[Any] = (),
    *,
    warm_up: int = WARM_UP_TASKS,
    detail: bool = False,
) -> Callable[[RunContext], dict[str, float]]:
    """A repetition: publish ``count`` calls as fast as possible, then await every result.

    tasks/s = ``count`` / (first publish -> last result). With ``detail``, also
    the CPU time per task of the worker and of the producer over that window
    (less sensitive to a busy machine than wall time), and the worker's peak RSS.
    """

    def repetition(ctx: RunContext) -> dict[str, float]:
        url = sqlite_url(ctx)
        worker = start_worker(ctx, url)
        cpu: dict[str, float] = {}

        async def main() -> float:
            app = build(url)
            task = app.tasks[task_name]
            async with app, watching(worker):
                with anyio.fail_after(RESULT_TIMEOUT):
                    await await_all([task.delay(*args) for _ in range(warm_up)])
                ctx.progress(f"worker ready and warmed up ({warm_up} tasks); timing {count:,}")
                worker_cpu, producer_cpu = worker.cpu_seconds(), time.process_time()
                waited = cpu_wait_seconds(worker.pid) + cpu_wait_seconds(os.getpid())
                started = time.perf_counter()
                results = [task.delay(*args) for _ in range(count)]
                with anyio.fail_after(RESULT_TIMEOUT + count / 100):
                    await await_all(results, Ticker(ctx, "results", count))
                elapsed = time.perf_counter() - started
                cpu["worker"] = worker.cpu_seconds() - worker_cpu
                cpu["producer"] = time.process_time() - producer_cpu
                waited = cpu_wait_seconds(worker.pid) + cpu_wait_seconds(os.getpid()) - waited
                cpu["waited"] = waited / elapsed * 100
                return elapsed

        elapsed = run_async(main)
        values = {"tasks_per_s": count / elapsed}
        if detail:
            values["worker_cpu"] = cpu["worker"] / count * 1e6
            values["producer_cpu"] = cpu["producer"] / count * 1e6
            values["worker_rss"] = worker.peak_rss_bytes() / 2**20
            values["cpu_wait"] = cpu["waited"]
        stop_worker(worker)
        return values

    return repetition


def _latency(ctx: RunContext) -> dict[str, float]:
    """One call at a time: publish, await its result, next; percentiles of the round trips."""
    url = sqlite_url(ctx)
    worker = start_worker(ctx, url)

    async def main() -> list[float]:
        app = build(url)
        noop = app.tasks[NOOP]
        async with app, watching(worker):
            with anyio.fail_after(RESULT_TIMEOUT):
                for _ in range(LATENCY_WARM_UP):
                    await noop.delay()
            ticker = Ticker(ctx, "round trips", LATENCY_CALLS)
            samples = []
            with anyio.fail_after(RESULT_TIMEOUT):
                for index in range(LATENCY_CALLS):
                    started = time.perf_counter()
                    await noop.delay()
                    samples.append(time.perf_counter() - started)
                    ticker.poll(index)
            return samples

    samples = run_async(main)
    stop_worker(worker)
    return {f"p{q}": percentile(samples, q) * 1000 for q in (50, 90, 99)}


def _metric(key: str, label: str, unit: str, workload: str, **options: Any) -> Metric:
    return Metric(key=key, label=label, unit=unit, workload=workload, **options)


def _scenario(
    name: str,
    title: str,
    metrics: Sequence[Metric],
    repetition: Callable[[RunContext], Mapping[str, float]],
) -> Scenario:
    return Scenario(name, SYSTEM, title, tuple(metrics), repetition)


SCENARIOS = [
    _scenario(
        "sqlite-e2e",
        f"SQLite, {E2E_TASKS:,} async no-ops, publish all then await all, 1 worker process",
        [
            _metric(
                "tasks_per_s",
                f"SQLite end to end: {E2E_TASKS:,} async no-ops, 1 worker process",
                "tasks/s",
                "sqlite.e2e.noop",
                target=Target(5_000),
            ),
            _metric(
                "worker_cpu",
                "SQLite end to end: worker CPU time per task",
                "µs",
                "sqlite.e2e.noop.worker_cpu",
                higher_is_better=False,
                informational=True,
            ),
            _metric(
                "producer_cpu",
                "SQLite end to end: producer CPU time per task (publish + await)",
                "µs",
                "sqlite.e2e.noop.producer_cpu",
                higher_is_better=False,
                informational=True,
            ),
            _metric(
                "worker_rss",
                "SQLite end to end: worker peak RSS (VmHWM)",
                "MiB",
                "sqlite.e2e.noop.worker_rss",
                higher_is_better=False,
            ),
            _metric(
                "cpu_wait",
                "SQLite end to end: time runnable but waiting for a CPU (both processes)",
                "% of wall",
                "sqlite.e2e.noop.cpu_wait",
                higher_is_better=False,
                informational=True,
                decimals=1,
            ),
        ],
        _throughput(NOOP, E2E_TASKS, detail=True),
    ),
    _scenario(
        "sqlite-enqueue",
        f"SQLite, publish {E2E_TASKS:,} no-ops and flush, no worker",
        [
            _metric(
                "enqueue",
                f"SQLite enqueue only: {E2E_TASKS:,} no-ops published and flushed",
                "msgs/s",
                "sqlite.enqueue",
            )
        ],
        _enqueue,
    ),
    _scenario(
        "sqlite-latency",
        f"SQLite round trip, one call at a time, {LATENCY_CALLS} calls",
        [
            _metric(
                f"p{q}",
                f"SQLite round-trip latency p{q} (one call at a time)",
                "ms",
                f"sqlite.latency.p{q}",
                higher_is_better=False,
                target=Target(5.0, at_least=False) if q == 50 else None,
            )
            for q in (50, 90, 99)
        ],
        _latency,
    ),
    _scenario(
        "sqlite-thread",
        f"SQLite, {THREAD_TASKS:,} thread-kind no-ops (def), 1 worker process",
        [
            _metric(
                "tasks_per_s",
                f"SQLite end to end: {THREAD_TASKS:,} thread no-ops (def)",
                "tasks/s",
                "sqlite.e2e.noop_thread",
                informational=True,
            )
        ],
        _throughput(NOOP_SYNC, THREAD_TASKS),
    ),
    _scenario(
        "sqlite-boxed",
        f"SQLite, {BOXED_TASKS:,} boxed no-ops (run in box processes), 1 worker process",
        [
            _metric(
                "tasks_per_s",
                f"SQLite end to end: {BOXED_TASKS:,} boxed no-ops",
                "tasks/s",
                "sqlite.e2e.noop_boxed",
                informational=True,
            )
        ],
        _throughput(NOOP_BOXED, BOXED_TASKS, warm_up=50),
    ),
    _scenario(
        "sqlite-io",
        f"SQLite, {SLEEP_TASKS:,} async tasks that sleep {SLEEP_SECONDS * 1000:.0f} ms",
        [
            _metric(
                "tasks_per_s",
                f"SQLite end to end: {SLEEP_TASKS:,} async {SLEEP_SECONDS * 1000:.0f} ms sleeps",
                "tasks/s",
                "sqlite.e2e.sleep10ms",
                informational=True,
            )
        ],
        _throughput(SLEEP, SLEEP_TASKS, (SLEEP_SECONDS,), warm_up=100),
    ),
]
