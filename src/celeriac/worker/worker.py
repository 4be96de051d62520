"""The worker (CEP "Worker"): a service activator and idempotent receiver.

Pipeline::

    broker --fetch--> Consumer --Job--> Executor[kind] (internal queue + runners)
                                              |
                          ResultPublisher <---+  (store result, then ack)

plus :class:`~celeriac.worker.control.Control` (revocations, leases,
heartbeats). The parts are boot steps started in dependency order and stopped
in reverse: connections, result publisher, executors, control, consumer. So on
shutdown the consumer stops fetching first, executors give running tasks a
grace period and return the rest to the broker, the result publisher settles
everything, and only then do connections close.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import sniffio

from celeriac.runtime import Runtime
from celeriac.worker.budget import Budget, BudgetStrategy
from celeriac.worker.consumer import Consumer
from celeriac.worker.control import Control, Revocations
from celeriac.worker.executor import Executor
from celeriac.worker.job import RecentIds
from celeriac.worker.settle import ResultPublisher

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.tasks.task import Kind

__all__ = ["Worker"]

log = logging.getLogger("celeriac.worker")

THREAD_WARNING = 10


class Worker:
    """Consumes commands for ``app`` from ``queues`` and runs them.

    ``concurrency`` caps thread and process tasks (default: 10 threads, one box
    per CPU); ``async_concurrency`` caps coroutine tasks. ``grace`` is how long
    running tasks may finish after a stop request before they are returned to
    the broker. ``budgets`` replaces the default budget strategy per kind.
    """

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        async_concurrency: int = 1000,
        prefetch: int | None = None,
        name: str | None = None,
        grace: float = 30.0,
        heartbeat: float = 2.0,
        budgets: dict[Kind, BudgetStrategy] | None = None,
    ) -> None:
        self.app = app
        self.queues = list(queues) if queues else app.queues()
        self.name = name or f"{app.name}@{socket.gethostname()}:{os.getpid()}:{id(self) & 0xFFFF:x}"
        self.grace = grace
        self.heartbeat = heartbeat
        threads = concurrency if concurrency is not None else 10
        boxes = concurrency if concurrency is not None else (os.cpu_count() or 1)
        if threads > THREAD_WARNING:
            log.warning(
                "a concurrency of %d threads for CPU-bound tasks is above %d; too many threads "
                "can grind task execution to a halt",
                threads,
                THREAD_WARNING,
            )
        self.budgets: dict[Kind, BudgetStrategy] = {
            "coroutine": Budget(min(64, async_concurrency), async_concurrency),
            "thread": Budget(1, threads),
            "process": Budget(1, boxes),
        }
        if budgets:
            self.budgets.update(budgets)
        self.prefetch = prefetch or max(256, 2 * threads + 2 * boxes)
        self.recent = RecentIds(app.settings.dedup_window)
        self.revoked = Revocations()
        self.executors: dict[str, Executor] = {}
        self.consumer: Consumer | None = None
        self.runtime: Runtime | None = None
        self._stop = anyio.Event()
        self._stopped = anyio.Event()

    # -- control ------------------------------------------------------------------

    def request_stop(self) -> None:
        """Begin a graceful shutdown (safe to call more than once)."""
        self._stop.set()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`run` has finished its shutdown."""
        await self._stopped.wait()

    def stats(self) -> dict[str, Any]:
        """Counters and the load of each executor."""
        processed = sum(e.processed for e in self.executors.values())
        failed = sum(e.failed for e in self.executors.values())
        running = sum(len(e.running) for e in self.executors.values())
        return {
            "processed": processed,
            "failed": failed,
            "running": running,
            "held": len(self.consumer.held) if self.consumer else 0,
            "executors": {k: e.load for k, e in self.executors.items()},
            "duplicates": self.consumer.duplicates if self.consumer else 0,
            "rejected": self.consumer.rejected if self.consumer else 0,
        }

    def _cancel(self, id: str) -> None:
        for executor in self.executors.values():
            if executor.cancel(id):
                log.info("revoked task %s cancelled while running", id)

    # -- the run -------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`request_stop` (or cancellation), then shut down gracefully."""
        app = self.app
        runtime = self.runtime = Runtime(app)
        loop_name = sniffio.current_async_library()
        try:
            async with runtime.running():
                app._bridge.attach(runtime)
                await self._serve(runtime, loop_name, task_status)
        finally:
            app._bridge.detach(runtime)
            self._stopped.set()

    async def _serve(
        self, runtime: Runtime, loop_name: str, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        app = self.app
        broker = runtime.broker
        lease = float(getattr(broker, "visibility_timeout", 30.0))
        consumer_ref: list[Consumer] = []
        settle = ResultPublisher(
            broker,
            runtime.sinks,
            result_ttl=app.settings.result_ttl,
            on_settled=lambda ds: consumer_ref[0].settled(ds),
        )
        is_revoked = self.revoked.__contains__
        for kind, budget in self.budgets.items():
            self.executors[kind] = Executor(
                kind,
                budget,
                settle,
                app.codec,
                worker_name=self.name,
                is_revoked=is_revoked,
                track_started=app.settings.track_started,
            )
        consumer = self.consumer = Consumer(
            broker,
            self.queues,
            app.tasks,
            self.executors,
            settle,
            app.codec,
            recent=self.recent,
            is_revoked=is_revoked,
            prefetch=self.prefetch,
        )
        consumer_ref.append(consumer)
        control = Control(
            broker,
            name=self.name,
            queues=self.queues,
            held=lambda: list(consumer.held.values()),
            cancel=self._cancel,
            load=self.stats,
            revoked=self.revoked,
            lease=lease,
            heartbeat=self.heartbeat,
            loop=loop_name,
        )
        async with anyio.create_task_group() as parts:
            parts.start_soon(settle.run)
            for executor in self.executors.values():
                await parts.start(executor.run)
            await parts.start(control.run)
            await parts.start(consumer.run)
            log.info(
                "worker %s ready: queues %s, tasks %s",
                self.name,
                ",".join(self.queues),
                ",".join(sorted(app.tasks)),
            )
            task_status.started()
            try:
                await self._stop.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._shutdown(consumer, settle, control)
                parts.cancel_scope.cancel()

    async def _shutdown(self, consumer: Consumer, settle: ResultPublisher, control: Control) -> None:
        log.info("worker %s stopping: no new tasks; %ss grace for running ones", self.name, self.grace)
        consumer.stop()
        with anyio.move_on_after(max(5.0, consumer.fetch_timeout * 10)):
            await consumer.wait_done()
        async with anyio.create_task_group() as tg:
            for executor in self.executors.values():
                tg.start_soon(executor.stop, self.grace)
        with anyio.move_on_after(max(5.0, self.grace)):
            await settle.flush()
        settle.close()
        await control.goodbye()
        log.info("worker %s stopped (%s)", self.name, self.stats())
