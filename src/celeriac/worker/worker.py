"""The worker (CEP "Worker"): a service activator and idempotent receiver.

Pipeline::

    broker --fetch--> Consumer --Job--> Executor[kind] (internal queue + runners)
                                              |
                          ResultPublisher <---+  (store result, then ack)

plus :class:`~celeriac.worker.control.Control` (revocations, leases,
heartbeats). The parts are boot steps of an actor supervisor, started in
dependency order and stopped in reverse: connections, results, leases,
executors, consumer, and the optional heartbeats. So on shutdown the consumer
stops fetching first, the executors give running tasks a grace period (leases
are still extended meanwhile) and return the rest to the broker, the result
publisher settles everything, and only then do connections close.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import sniffio

from celeriac.abc import Coordinator
from celeriac.actors import (
    ActorSystem,
    Backoff,
    ChildSpec,
    ServiceActor,
    Supervisor,
    actor_system,
)
from celeriac.brokers import Hub
from celeriac.coordination import open_coordinator
from celeriac.router import Router
from celeriac.runtime import Runtime
from celeriac.scheduler.priorities import FetchStrategy, ResourceSaturation
from celeriac.worker.budget import Budget, BudgetStrategy
from celeriac.worker.consumer import Consumer
from celeriac.worker.control import Control, Revocations
from celeriac.worker.dedupe import Deduper
from celeriac.worker.executor import Executor
from celeriac.worker.failing import Failures
from celeriac.worker.gate import Gate
from celeriac.worker.health import HealthMonitor, connection_checks
from celeriac.worker.job import RecentIds
from celeriac.worker.scaling import ScaleFollower
from celeriac.worker.services import ConnectionsActor
from celeriac.worker.settle import ResultPublisher
from celeriac.worker.suspend import Follower, Suspensions

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
    ``strategy`` picks the queues of each fetch (default: resource saturation,
    preferring the queues listed first; see :mod:`celeriac.scheduler.priorities`).
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
        strategy: FetchStrategy | None = None,
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
        self.strategy: FetchStrategy = strategy or ResourceSaturation()
        self.prefetch = prefetch or max(256, 2 * threads + 2 * boxes)
        self.recent = RecentIds(app.settings.dedup_window)
        self.revoked = Revocations()
        self.executors: dict[str, Executor] = {}
        self.failures: Failures | None = None  # made with the executors, at start
        self.suspensions = Suspensions()
        self.gate = Gate(
            self.name,
            open_coordinator("memory://gate", Hub()),  # this worker's own limits
            self._coordination,
            lambda job: self.executors[job.task.kind].submit(job),
        )
        self.health: HealthMonitor | None = None
        self.follower = Follower(self.suspensions, lambda: list(app.tasks), self._coordination)
        self.scaling = ScaleFollower(
            app.name, lambda: self._runtime().sink, lambda: self.budgets.values()
        )
        self.runtime: Runtime | None = None
        self.system: ActorSystem | None = None
        self._built: _Parts | None = None
        self._loop = "asyncio"
        # Events belong to the loop that runs the worker: made in run(), not here.
        self._stop: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._stop_requested = False

    # -- control ------------------------------------------------------------------

    def request_stop(self, grace: float | None = None) -> None:
        """Begin a graceful shutdown (safe to call more than once).

        ``grace`` overrides the grace period; ``0`` returns running tasks to the
        broker at once (a second SIGTERM/SIGINT does that).
        """
        if grace is not None:
            self.grace = grace
            for executor in self.executors.values():
                executor.hurry(grace)
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`run` has finished its shutdown."""
        if self._stopped is None:
            raise RuntimeError("the worker has not been started")
        await self._stopped.wait()

    def capacity(self) -> int:
        """The most tasks this worker may run at once: the maxima of the kinds it runs.

        Only kinds with tasks routed to this worker's queues count (a worker of
        thread tasks is not a thousand coroutines strong).
        """
        kinds = {t.kind for t in self.app.tasks.values() if t.options.queue in self.queues}
        return sum(e.maximum for k, e in self.executors.items() if k in kinds)

    def stats(self) -> dict[str, Any]:
        """Counters and the load of each executor."""
        processed = sum(e.processed for e in self.executors.values())
        failed = sum(e.failed for e in self.executors.values())
        running = sum(len(e.running) for e in self.executors.values())
        consumers = [b.consumer for b in self._built.brokers] if self._built else []
        return {
            "processed": processed,
            "failed": failed,
            "running": running,
            "capacity": self.capacity(),
            "held": sum(len(c.held) for c in consumers),
            "executors": {k: e.load for k, e in self.executors.items()},
            "duplicates": sum(c.duplicates for c in consumers),
            "rejected": sum(c.rejected for c in consumers),
            "suspended": self.suspensions.suspended(),
            "health": self.health.states() if self.health is not None else {},
        }

    def _cancel(self, id: str) -> None:
        for executor in self.executors.values():
            if executor.cancel(id):
                log.info("revoked task %s cancelled while running", id)

    # -- the run -------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until :meth:`request_stop` (or cancellation), then shut down gracefully.

        The parts run as an actor tree: a supervisor whose children are the boot
        steps below, started in dependency order and stopped in reverse.
        """
        stop = self._stop = anyio.Event()
        stopped = self._stopped = anyio.Event()
        if self._stop_requested:
            stop.set()
        app = self.app
        self.runtime = Runtime(app)
        self._loop = sniffio.current_async_library()
        # Boot steps. Stopped in reverse: the consumer stops fetching; the executors
        # give running tasks their grace period while leases are still extended and
        # revocations still read; then outcomes are settled; connections close last.
        children = [
            ChildSpec(
                "connections",
                lambda: ConnectionsActor(self._runtime(), app._bridge),
                shutdown_timeout=30.0,
            ),
            ChildSpec(
                "results",
                lambda: ServiceActor(self._run_results, self._stop_results),
                depends_on=("connections",),
                shutdown_timeout=self.grace + 30.0,
            ),
            ChildSpec(
                "leases",
                lambda: ServiceActor(self._run_leases),
                depends_on=("connections",),
            ),
            ChildSpec(
                "executors",
                lambda: ServiceActor(self._run_executors, self._stop_executors),
                depends_on=("results", "leases"),
                shutdown_timeout=self.grace + 10.0,
            ),
            ChildSpec(
                "consumer",
                lambda: ServiceActor(self._run_consumers, self._stop_consumers),
                depends_on=("executors",),
                shutdown_timeout=10.0,
            ),
            # Optional: a worker whose checks or status reports fail still does its work.
            ChildSpec(
                "suspensions",
                lambda: ServiceActor(self.follower.run),
                depends_on=("connections",),
                mandatory=False,
                retry_interval=1.0,
            ),
            ChildSpec(
                "autoscaling",
                lambda: ServiceActor(self.scaling.run),
                depends_on=("connections",),
                mandatory=False,
                retry_interval=1.0,
            ),
            ChildSpec(
                "health",
                lambda: ServiceActor(self._monitor().run),
                depends_on=("connections",),
                mandatory=False,
                retry_interval=1.0,
            ),
            ChildSpec(
                "heartbeats",
                lambda: ServiceActor(
                    self._parts().default.control.run_heartbeats,
                    self._parts().default.control.goodbye,
                ),
                depends_on=("connections",),
                mandatory=False,
                retry_interval=1.0,
            ),
        ]
        root = Supervisor(children, max_restarts=5, period=30.0, backoff=Backoff(0.1, 5.0))
        try:
            async with actor_system(
                root, name="worker", shutdown_timeout=self.grace + 60
            ) as system:
                self.system = system
                log.info(
                    "worker %s ready: queues %s, tasks %s",
                    self.name,
                    ",".join(self.queues),
                    ",".join(sorted(app.tasks)),
                )
                task_status.started()
                await stop.wait()
                log.info(
                    "worker %s stopping: no new tasks; %ss grace for running ones",
                    self.name,
                    self.grace,
                )
        finally:
            stopped.set()
            log.info("worker %s stopped (%s)", self.name, self.stats())

    def _monitor(self) -> HealthMonitor:
        if self.health is None:
            app, runtime = self.app, self._runtime()
            tasks = list(app.tasks.values())
            checks = list(app.health_checks.values())
            for task in tasks:
                breaker = task.options.breaker
                checks += list(breaker.health_checks) if breaker is not None else []
            checks += connection_checks(runtime.brokers, runtime.sinks)
            self.health = HealthMonitor(checks, tasks, self.suspensions)
        return self.health

    def _runtime(self) -> Runtime:
        assert self.runtime is not None
        return self.runtime

    def _parts(self) -> _Parts:
        """The worker's parts, made once the connections are open."""
        if self._built is None:
            self._built = self._build(self._runtime())
        return self._built

    async def _run_executors(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        runs = [e.run for e in self._parts().executors.values()]
        await _run_all([*runs, self.gate.run], task_status)

    async def _coordination(self) -> Coordinator:
        return await self._runtime().coordination()

    async def _stop_executors(self) -> None:
        for job in self.gate.drain():  # waiting for a limit: back to the broker at once
            job.settle.release(job.delivery)
        async with anyio.create_task_group() as tg:
            for executor in self._parts().executors.values():
                tg.start_soon(executor.stop, self.grace)

    async def _run_results(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await _run_all([b.settle.run for b in self._parts().brokers], task_status)

    async def _stop_results(self) -> None:
        async def stop(settle: ResultPublisher) -> None:
            with anyio.move_on_after(max(5.0, self.grace)):
                await settle.flush()
            settle.close()

        async with anyio.create_task_group() as tg:
            for part in self._parts().brokers:
                tg.start_soon(stop, part.settle)

    async def _run_leases(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await _run_all([b.control.run for b in self._parts().brokers], task_status)

    async def _run_consumers(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        if self.app.subscriptions:  # before any event is routed here
            parts = self._parts()
            router = parts.default.settle.router
            assert router is not None
            await router.register()
        await _run_all([b.consumer.run for b in self._parts().brokers], task_status)

    async def _stop_consumers(self) -> None:
        async def stop(consumer: Consumer) -> None:
            consumer.stop()
            with anyio.move_on_after(max(5.0, consumer.fetch_timeout * 10)):
                await consumer.wait_done()

        async with anyio.create_task_group() as tg:
            for part in self._parts().brokers:
                tg.start_soon(stop, part.consumer)

    def queue_map(self) -> dict[str, list[str]]:
        """Which queues this worker consumes on which broker (by URL).

        A queue lives on the broker its tasks are routed to (``routes`` entries of
        the form ``"url#queue"``); every other queue lives on the default broker.
        """
        app = self.app
        homes: dict[str, str] = {}
        for task in app.tasks.values():
            url, _ = app._route(task.name, None)
            if url != app.broker_url:
                homes[task.options.queue] = url
        mapping: dict[str, list[str]] = {}
        for queue in self.queues:
            mapping.setdefault(homes.get(queue, app.broker_url), []).append(queue)
        return mapping

    def _build(self, runtime: Runtime) -> _Parts:
        app = self.app
        is_revoked = self.revoked.__contains__
        self.failures = Failures(app.codec, app.settings.retry, worker_name=self.name)
        for kind, budget in self.budgets.items():
            self.executors[kind] = Executor(
                kind,
                budget,
                app.codec,
                worker_name=self.name,
                is_revoked=is_revoked,
                failures=self.failures,
                deduper=Deduper(
                    runtime.sinks["default"],
                    app.settings.dedupe_ttl,
                    every_message=app.settings.receiver_store,
                ),
                suspensions=self.suspensions,
                gate=self.gate,
                track_started=app.settings.track_started,
            )
        mapping = self.queue_map()
        brokers = []
        # Revocations are read on every broker the app knows (a revoke is recorded on
        # each), leases kept where the deliveries came from.
        for url in app.broker_urls:
            brokers.append(self._broker_parts(runtime, url, mapping.get(url, [])))
        return _Parts(dict(self.executors), brokers)

    def _broker_parts(self, runtime: Runtime, url: str, queues: list[str]) -> _BrokerParts:
        app = self.app
        broker = runtime.brokers[url]
        consumer_ref: list[Consumer] = []
        settle = ResultPublisher(
            broker,
            runtime.sinks,
            result_ttl=app.settings.result_ttl,
            on_settled=lambda ds, dead: consumer_ref[0].settled(ds, dead),
            router=Router(app, runtime),
        )
        consumer = Consumer(
            broker,
            queues,
            app.tasks,
            self.executors,
            settle,
            app.codec,
            recent=self.recent,
            is_revoked=self.revoked.__contains__,
            prefetch=self.prefetch,
            max_deliveries=app.settings.max_deliveries,
            strategy=self.strategy,
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
            lease=float(getattr(broker, "visibility_timeout", 30.0)),
            heartbeat=self.heartbeat,
            loop=self._loop,
        )
        return _BrokerParts(url, settle, consumer, control)


async def _run_all(
    runs: list[Callable[..., Coroutine[Any, Any, None]]], task_status: anyio.abc.TaskStatus[None]
) -> None:
    """Run services side by side; ready once all of them are."""
    async with anyio.create_task_group() as tg:
        for run in runs:
            await tg.start(run)
        task_status.started()


class _BrokerParts:
    """What the worker runs per broker: consumer, result publisher, leases."""

    __slots__ = ("consumer", "control", "settle", "url")

    def __init__(
        self, url: str, settle: ResultPublisher, consumer: Consumer, control: Control
    ) -> None:
        self.url = url
        self.settle = settle
        self.consumer = consumer
        self.control = control


class _Parts:
    __slots__ = ("brokers", "executors")

    def __init__(self, executors: dict[str, Executor], brokers: list[_BrokerParts]) -> None:
        self.executors = executors
        self.brokers = brokers

    @property
    def default(self) -> _BrokerParts:
        """The parts of the default broker (heartbeats go there)."""
        return self.brokers[0]
