"""What the celeriac scenarios share: the event loop, worker subprocesses, awaiting."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio

from bench.apps import QUEUE
from bench.harness import ManagedProcess, RunContext, Ticker, python
from celeriac import Result
from celeriac.abc import QueueStats
from celeriac.brokers import Hub, open_broker

__all__ = [
    "await_all",
    "event_loop",
    "queue_stats",
    "run_async",
    "sqlite_url",
    "start_worker",
    "stop_worker",
    "watching",
]

T = TypeVar("T")

RESULT_TIMEOUT = 120.0
"""Seconds a phase of waiting for results may take before the run fails (something is stuck)."""


def event_loop(backend: str = "asyncio") -> str:
    """How ``backend`` runs here: asyncio uses uvloop when installed, as the CLI does."""
    if backend == "asyncio" and importlib.util.find_spec("uvloop") is not None:
        return "asyncio+uvloop"
    return backend


def run_async(fn: Callable[[], Awaitable[T]], backend: str = "asyncio") -> T:
    """Run ``fn()`` on a new event loop of ``backend`` (uvloop for asyncio when installed)."""
    options: dict[str, Any] = {}
    if event_loop(backend) == "asyncio+uvloop":
        options["use_uvloop"] = True
    return anyio.run(fn, backend=backend, backend_options=options)


def sqlite_url(ctx: RunContext) -> str:
    """A broker URL on a fresh file in the repetition's temporary directory."""
    return f"sqlite:///{ctx.tmpdir / 'bench.db'}"


def start_worker(
    ctx: RunContext, broker: str, *extra: str, sinks: Mapping[str, str] | None = None
) -> ManagedProcess:
    """``python -m celeriac worker bench.apps:app -Q bench`` as a subprocess on ``broker``.

    ``sinks`` (name -> URL) reach it as ``CELERIAC_SINKS``; without, results go beside
    the broker.
    """
    args = [
        python(),
        "-m",
        "celeriac",
        "--log-level",
        "WARNING",
        "--log-format",
        "json",
        "worker",
        "bench.apps:app",
        "-Q",
        QUEUE,
        *extra,
    ]
    env = {"CELERIAC_BROKER": broker}
    if sinks:
        env["CELERIAC_SINKS"] = json.dumps(dict(sinks))
    process = ctx.spawn("worker", args, ctx.subprocess_env(**env))
    ctx.progress(f"worker subprocess started (pid {process.pid})")
    return process


def stop_worker(worker: ManagedProcess) -> None:
    """SIGTERM the worker, wait for its graceful exit; an error if it did not exit cleanly."""
    code = worker.stop()
    if code != 0:
        raise RuntimeError(f"the worker exited with code {code}:\n{worker.log_tail()}")


@asynccontextmanager
async def watching(process: ManagedProcess, what: str = "worker") -> AsyncIterator[None]:
    """Fail the block at once (with the log's tail) if ``process`` exits during it."""

    async def watch() -> None:
        while True:
            process.check_alive(what)
            await anyio.sleep(0.1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        yield
        tg.cancel_scope.cancel()


async def await_all(results: Sequence[Result[Any]], ticker: Ticker | None = None) -> None:
    """Await every result in order, as users write it: ``for r in results: await r``.

    There is no timeout per result (that would add a timer per await); callers
    put one deadline around the whole phase.
    """
    for done, result in enumerate(results):
        await result
        if ticker is not None and done % 500 == 0:
            ticker.poll(done)


async def await_concurrently(results: Sequence[Result[Any]]) -> None:
    """Await every result at once, one task each in a task group."""
    async with anyio.create_task_group() as tg:
        for result in results:
            tg.start_soon(result.get_async)


async def queue_stats(broker: str) -> QueueStats:
    """The bench queue's counts, read through the broker interface."""
    conn = open_broker(broker, Hub())
    await conn.connect()
    try:
        stats = await conn.stats()
    finally:
        await conn.close()
    return stats.get(QUEUE, QueueStats(0, 0, 0))


def elapsed_since(started: float) -> float:
    """Seconds since ``started`` (a ``time.perf_counter()`` reading)."""
    return time.perf_counter() - started
