"""celeriac on the memory broker, worker and producer in one process and loop (``celeriac dev``)."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from bench.apps import NOOP, QUEUE, build
from bench.harness import Metric, RunContext, Scenario, Target, Ticker, cpu_wait_seconds
from bench.systems.celeriac_common import (
    RESULT_TIMEOUT,
    await_all,
    await_concurrently,
    run_async,
)
from celeriac import Result

__all__ = ["SCENARIOS"]

SYSTEM = "celeriac"

TASKS = 50_000
WARM_UP_TASKS = 1_000


def _in_process(backend: str, awaiting: str) -> Callable[[RunContext], dict[str, float]]:
    """A repetition: a worker started in this loop, then publish N no-ops and await them.

    ``awaiting`` is ``sequential`` (``for r in results: await r``) or ``concurrent``
    (one task per result in a task group). Also reports the process's CPU time
    per task over the timed window.
    """

    def repetition(ctx: RunContext) -> dict[str, float]:
        async def main() -> tuple[float, float, float]:
            app = build("memory://bench")
            noop = app.tasks[NOOP]
            worker = app.worker(queues=[QUEUE])
            wait: Callable[[Sequence[Result[Any]]], Awaitable[None]]
            if awaiting == "sequential":

                def wait(results: Sequence[Result[Any]]) -> Awaitable[None]:
                    return await_all(results, Ticker(ctx, "results", TASKS))

            else:
                wait = await_concurrently
            async with anyio.create_task_group() as tg:
                await tg.start(worker.run)
                try:
                    with anyio.fail_after(RESULT_TIMEOUT):
                        await await_all([noop.delay() for _ in range(WARM_UP_TASKS)])
                    ctx.progress(f"in-process worker warmed up; timing {TASKS:,}")
                    cpu = time.process_time()
                    waited = cpu_wait_seconds(os.getpid())
                    started = time.perf_counter()
                    with anyio.fail_after(RESULT_TIMEOUT + TASKS / 100):
                        await wait([noop.delay() for _ in range(TASKS)])
                    elapsed = time.perf_counter() - started
                    cpu = time.process_time() - cpu
                    waited = cpu_wait_seconds(os.getpid()) - waited
                finally:
                    worker.request_stop()
                    with anyio.fail_after(60):
                        await worker.wait_stopped()
            return elapsed, cpu, waited

        elapsed, cpu, waited = run_async(main, backend)
        return {
            "tasks_per_s": TASKS / elapsed,
            "cpu": cpu / TASKS * 1e6,
            "cpu_wait": waited / elapsed * 100,
        }

    return repetition


def _scenario(
    name: str,
    label: str,
    cpu_label: str,
    workload: str,
    repetition: Callable[[RunContext], dict[str, float]],
    **options: Any,
) -> Scenario:
    prefix = cpu_label.rsplit(":", 1)[0]
    metrics = (
        Metric("tasks_per_s", label, "tasks/s", workload, **options),
        Metric(
            "cpu",
            cpu_label,
            "µs",
            f"{workload}.cpu",
            higher_is_better=False,
            informational=True,
        ),
        Metric(
            "cpu_wait",
            f"{prefix}: time runnable but waiting for a CPU",
            "% of wall",
            f"{workload}.cpu_wait",
            higher_is_better=False,
            informational=True,
            decimals=1,
        ),
    )
    return Scenario(name, SYSTEM, label, metrics, repetition)


SCENARIOS = [
    _scenario(
        "memory-e2e",
        f"memory:// in one process: {TASKS:,} async no-ops, publish all, await all in turn",
        "memory:// in one process: CPU time per task",
        "memory.e2e.noop",
        _in_process("asyncio", "sequential"),
        target=Target(30_000),
    ),
    _scenario(
        "memory-e2e-concurrent",
        f"memory:// in one process, results awaited concurrently: {TASKS:,} async no-ops",
        "memory:// in one process, awaited concurrently: CPU time per task",
        "memory.e2e.noop.concurrent",
        _in_process("asyncio", "concurrent"),
        informational=True,
    ),
    _scenario(
        "memory-e2e-trio",
        f"memory:// in one process on trio: {TASKS:,} async no-ops, await all in turn",
        "memory:// in one process on trio: CPU time per task",
        "memory.e2e.noop.trio",
        _in_process("trio", "sequential"),
        informational=True,
    ),
]
