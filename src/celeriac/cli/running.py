"""Running a worker (and optionally a program beside it) until a signal arrives."""

from __future__ import annotations

import gc
import importlib
import inspect
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import click

from celeriac.app import App
from celeriac.scheduler.runner import PeriodicScheduler
from celeriac.worker import Worker

__all__ = ["load_callable", "run_worker"]

log = logging.getLogger("celeriac.cli")


def load_callable(spec: str) -> Callable[..., Any]:
    """Import ``module:function``."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise click.BadParameter(f"{spec!r} is not module:function")
    module = importlib.import_module(module_name)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise click.BadParameter(f"{spec} is not callable")
    return fn  # type: ignore[no-any-return]


async def _watch_signals(worker: Worker, scope: anyio.CancelScope, early: list[int]) -> None:
    count = 0

    def handle(signum: int) -> bool:
        nonlocal count
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            log.warning("%s: stopping gracefully (send it again to stop at once)", name)
            worker.request_stop()
        elif count == 2:
            log.warning("%s again: stopping now; running tasks go back to the broker", name)
            worker.request_stop(grace=0)
        else:
            # Graceful steps are shielded; this is the way out that does not wait.
            # Unsettled messages are redelivered when their leases expire.
            log.warning("%s a third time: exiting now", name)
            os._exit(130)
        return True

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        for signum in early:  # arrived before this receiver was installed
            if not handle(signum):
                return
        early.clear()
        async for signum in signals:
            if not handle(signum):
                return


async def _run_program(app: App, program: Callable[..., Any]) -> Any:
    if inspect.iscoroutinefunction(program):
        return await program(app)
    return await anyio.to_thread.run_sync(program, app)


def _tune_gc() -> None:
    """Collect less often in a process celeriac owns.

    Everything imported so far (the app, its tasks, celeriac) lives as long as the
    process: freezing it keeps the collector from walking it again and again, and a
    larger young generation means fewer pauses under a high message rate. Cycles are
    still collected. Only the CLI does this; an app used as a library in someone
    else's process leaves that process's collector alone.
    """
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(50_000, second, third)


def run_worker(
    app: App,
    *,
    loop: str,
    program: Callable[..., Any] | None = None,
    periodic: bool = False,
    **options: Any,
) -> int:
    """Run a worker until SIGTERM/SIGINT, or until ``program(app)`` returns.

    With ``periodic``, a :class:`~celeriac.scheduler.runner.PeriodicScheduler` runs
    beside it when the app has periodic tasks (``celeriac dev``).
    """
    exit_code = 0

    async def main() -> None:
        nonlocal exit_code
        worker = Worker(app, **options)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_signals, worker, tg.cancel_scope, early)
            await tg.start(worker.run)
            if periodic and app.periodics:
                await tg.start(PeriodicScheduler(app).run)
            if program is not None:
                try:
                    result = await _run_program(app, program)
                    if isinstance(result, int):
                        exit_code = result
                except Exception:
                    log.exception("the program given with --run failed")
                    exit_code = 1
                worker.request_stop()
            await worker.wait_stopped()
            tg.cancel_scope.cancel()

    # Until the loop's own receiver is installed, remember signals instead of dying.
    early: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda signum, frame: early.append(signum))
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    _tune_gc()
    backend_options: dict[str, Any] = {}
    if loop == "asyncio":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            backend_options["use_uvloop"] = True
    try:
        anyio.run(main, backend=loop, backend_options=backend_options)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return exit_code
