"""Worker processes for the distributed canvas tests, and what the tests read back.

- :func:`spawn`: a ``celeriac worker`` process of :mod:`tests.router.canvas_app`,
  its side-effect files named in its environment;
- :func:`cluster`: a broker of a test's own (a SQLite file or a Redis key prefix)
  with worker processes on it, for a block;
- :func:`drained`: wait until a queue holds no message, ready or leased: a canvas
  whose final result is stored and whose queue drained has done everything it
  will ever do (a step's successors and callbacks are published before the step's
  message is acked);
- :func:`outcomes`: the stored task outcomes among some ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from tests.brokers._shared import redis_namespace, run_in_thread
from tests.router.canvas_app import make_app
from tests.worker.helpers import lines, stop, wait_for_workers

from celeriac import App
from celeriac.runtime import Runtime
from celeriac.tasks.outcome import Outcome
from celeriac.testing.conformance import with_options

APP = "tests.router.canvas_app:app"
BROKERS = ("sqlite", "redis")


@dataclass
class Cluster:
    """A broker URL, the worker processes on it, and their side-effect files."""

    url: str
    errbacks: Path  #: JSON lines: the arguments of every ``t.record`` call
    effects: Path  #: ``member n pid`` / ``body n pid`` lines of the kill test's chord
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: Path | None = None
    extra: tuple[str, ...] = ()  #: options of every worker process

    def spawn(self, loop: str = "asyncio") -> subprocess.Popen[bytes]:
        """Start one more worker process on this cluster's broker."""
        process = spawn(self.url, self.errbacks, self.effects, loop, *self.extra, log=self.logs)
        self.workers.append(process)
        return process

    def errback_calls(self, since: int = 0) -> list[Any]:
        """The arguments of the ``t.record`` calls from line ``since`` on."""
        return [json.loads(line) for line in lines(self.errbacks)[since:]]


def spawn(
    url: str, errbacks: Path, effects: Path, loop: str, *extra: str, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """A ``celeriac worker`` process of the canvas app on ``url``."""
    env = dict(
        os.environ,
        CELERIAC_BROKER=url,
        CANVAS_ERRBACKS=str(errbacks),
        CANVAS_EFFECTS=str(effects),
    )
    command = [sys.executable, "-m", "celeriac", "--log-format", "json", "worker", APP]
    command += ["--loop", loop, "--grace", "5", *extra]
    out = open(log, "ab") if log else None  # noqa: SIM115 - the child gets a copy
    try:
        return subprocess.Popen(
            command, env=env, stdout=out or subprocess.DEVNULL, stderr=out or subprocess.DEVNULL
        )
    finally:
        if out is not None:
            out.close()


@contextmanager
def broker_url(kind: str, directory: Path, **options: object) -> Iterator[str]:
    """A broker URL of its own: a SQLite file in ``directory`` or a Redis key prefix."""
    if kind == "sqlite":
        yield with_options(f"sqlite:///{directory / 'canvas.db'}", **options)
        return
    with redis_namespace() as url:
        yield with_options(url, **options) if options else url


@contextmanager
def cluster(
    kind: str,
    directory: Path,
    loops: Sequence[str] = ("asyncio", "trio"),
    extra: Sequence[str] = (),
    **options: object,
) -> Iterator[Cluster]:
    """A broker of its own with one worker process per loop in ``loops``, each up.

    ``extra`` are more ``celeriac worker`` options; ``options`` go into the broker
    URL (``visibility_timeout=2``).
    """
    with ExitStack() as stack:
        url = stack.enter_context(broker_url(kind, directory, **options))
        found = Cluster(url, directory / "errbacks.jsonl", directory / "effects")
        found.logs = directory / "workers.log"
        stack.callback(_stop_all, found)
        found.extra = tuple(extra)
        for loop in loops:
            found.spawn(loop)
        run_in_thread(lambda: _wait_for_workers(url, len(loops)))
        yield found


def _stop_all(found: Cluster) -> None:
    for process in found.workers:
        if process.poll() is None:
            stop(process)


async def _wait_for_workers(url: str, count: int) -> None:
    app = make_app(url)
    async with app:
        await wait_for_workers(app, count, timeout=60)


async def _runtime(runtime: Runtime) -> Runtime:
    return runtime


async def runtime_of(app: App) -> Runtime:
    """The runtime ``app`` runs in the calling event loop (``async with app:``)."""
    return await app._bridge.call_async(_runtime)


async def drained(app: App, queues: Sequence[str] = ("default",), timeout: float = 30) -> None:
    """Wait until ``queues`` hold no message: none ready, delayed or leased."""
    runtime = await runtime_of(app)
    with anyio.fail_after(timeout):
        while True:
            stats = await runtime.broker.stats()
            left = [stats[q] for q in queues if q in stats]
            if not any(s.ready or s.delayed or s.in_flight for s in left):
                return
            await anyio.sleep(0.02)


async def outcomes(app: App, ids: Sequence[str]) -> dict[str, Outcome]:
    """The stored outcomes among the task ids ``ids`` (ids with none are left out)."""
    runtime = await runtime_of(app)
    found = await runtime.sink.get(list(ids))
    return {id: app._outcome(doc) for id, doc in found.items()}
