"""Autoscaling signals: sample the cluster, recommend, publish (CEP "Autoscaler").

:class:`AutoscaleSignals` runs in ``celeriac scheduler`` (and ``celeriac dev``).
However many schedulers run, one leads at a time: the holder of the claim
``autoscale:<app>`` in the coordinator, renewed every sampling and given up to a
peer within three intervals if its holder dies. Every ``interval`` seconds the
leader:

1. samples the brokers (:meth:`~celeriac.abc.Broker.stats` of each queue, and the
   live workers with their capacity), the tasks suspended through
   ``app.suspend`` (a queue whose every task is suspended has no demand), and
   the periodic ticks due before the next sampling;
2. feeds the :class:`~celeriac.scheduler.autoscale.Sample` to its
   :class:`~celeriac.scheduler.autoscale.Autoscaler` (exponentially growing
   cooldown between scale events);
3. publishes the :class:`~celeriac.scheduler.autoscale.Recommendation` as a
   document in the app's default sink, id ``celeriac.autoscale.<app>``, expiring
   after three intervals (a recommendation nobody renews lapses to "hold");
4. updates its Prometheus gauges, when ``--metrics-port`` serves them (see
   :class:`~celeriac.observability.metrics.AutoscaleMetrics`), for external
   autoscalers (KEDA, the HPA).

Workers read the document (:func:`read_recommendation`, through
:class:`celeriac.worker.scaling.ScaleFollower`) and their concurrency budgets
follow it: the maximum while it says "up", shrinking at once on "down".
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import msgspec

from celeriac.abc import Coordinator, DataSink, QueueStats, StoredDocument
from celeriac.errors import BrokerError
from celeriac.scheduler.autoscale import Autoscaler, Recommendation, Sample
from celeriac.scheduler.periodic import from_timestamp, ticks_between
from celeriac.worker.suspend import SUSPENDED

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.observability.metrics import AutoscaleMetrics
    from celeriac.runtime import Runtime

__all__ = ["AutoscaleSignals", "read_recommendation", "recommendation_id"]

log = logging.getLogger("celeriac.scheduler")

_DECODE = msgspec.json.Decoder(Recommendation)


def recommendation_id(app_name: str) -> str:
    """The id of the document holding ``app_name``'s latest recommendation."""
    return f"celeriac.autoscale.{app_name}"


async def read_recommendation(sink: DataSink, app_name: str) -> Recommendation | None:
    """The latest recommendation for the app, or None if none is current."""
    doc = (await sink.get([recommendation_id(app_name)])).get(recommendation_id(app_name))
    if doc is None:
        return None
    try:
        return _DECODE.decode(doc.body)
    except msgspec.DecodeError:
        log.warning("autoscale recommendation %s is malformed; ignored", doc.id)
        return None


class AutoscaleSignals:
    """Samples the app's queues and workers and publishes scaling recommendations.

    Start the app in the same event loop first (``async with app:``): the brokers
    and the sink are that loop's runtime's. ``name`` identifies this scheduler in
    the leader claim (default: host, pid and a random suffix).
    """

    def __init__(
        self,
        app: App,
        coordinator: Coordinator,
        *,
        name: str | None = None,
        interval: float = 5.0,
        autoscaler: Autoscaler | None = None,
        metrics: AutoscaleMetrics | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.app = app
        self.coordinator = coordinator
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.interval = interval
        self.autoscaler = autoscaler or Autoscaler()
        self.metrics = metrics
        self.leading = False
        self.latest: Recommendation | None = None
        self._stopping = False
        self._nap: anyio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<AutoscaleSignals {self.name} every {self.interval}s>"

    def request_stop(self) -> None:
        """Stop after the current sampling."""
        self._stopping = True
        if self._nap is not None:
            self._nap.cancel()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Sample every ``interval`` seconds until :meth:`request_stop`."""
        runtime = self.app._runtime_here()
        task_status.started()
        while not self._stopping:
            try:
                await self.step(runtime)
            except BrokerError as exc:
                log.warning("autoscaler %s cannot sample now: %s", self.name, exc)
            with anyio.CancelScope() as self._nap:
                await anyio.sleep(self.interval)
            self._nap = None
        if self.leading:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self.coordinator.claim(self._key, self.name, 0)  # hand over now

    @property
    def _key(self) -> str:
        return f"autoscale:{self.app.name}"

    async def step(self, runtime: Runtime) -> Recommendation | None:
        """One sampling: lead or not; if leading, sample, decide and publish."""
        holder = await self.coordinator.claim(self._key, self.name, 3 * self.interval)
        was, self.leading = self.leading, holder == self.name
        if self.leading != was:
            log.info(
                "autoscaler %s %s",
                self.name,
                "leads" if self.leading else f"follows {holder}",
            )
        if not self.leading:
            return None
        sample, queues = await self.sample(runtime)
        recommendation = self.autoscaler.observe(sample)
        doc = StoredDocument(
            id=recommendation_id(self.app.name),
            state=recommendation.direction,
            body=msgspec.json.encode(recommendation),
        )
        await runtime.sink.store([doc], 3 * self.interval)
        if self.metrics is not None:
            self.metrics.update(sample, recommendation, queues)
        previous, self.latest = self.latest, recommendation
        if recommendation.direction != "hold" or (
            previous is not None and previous.direction != "hold"
        ):
            log.info(
                "autoscaler %s: %s to %d workers (demand %d, capacity %d): %s",
                self.name,
                recommendation.direction,
                recommendation.workers,
                recommendation.demand,
                recommendation.capacity,
                recommendation.reason,
            )
        return recommendation

    async def sample(self, runtime: Runtime) -> tuple[Sample, dict[str, QueueStats]]:
        """What the cluster looks like now, and the counts of each queue."""
        now = await self.coordinator.time()
        queues: dict[str, QueueStats] = {}
        workers: dict[str, Any] = {}
        for broker in runtime.brokers.values():
            for queue, stats in (await broker.stats()).items():
                queues[queue] = _add(queues.get(queue), stats)
            for info in await broker.workers():
                workers[info.name] = info
        suspended = await self._suspended(queues)
        return (
            Sample(
                at=now,
                ready=sum(s.ready for s in queues.values()),
                delayed=sum(s.delayed for s in queues.values()),
                in_flight=sum(s.in_flight for s in queues.values()),
                suspended=suspended,
                upcoming=self._upcoming(now),
                workers=len(workers),
                capacity=sum(info.capacity for info in workers.values()),
            ),
            queues,
        )

    async def _suspended(self, queues: Mapping[str, QueueStats]) -> int:
        """Ready messages on queues whose every task is suspended by hand."""
        by_queue: dict[str, list[str]] = {}
        for task in self.app.tasks.values():
            by_queue.setdefault(task.options.queue, []).append(task.name)
        count = 0
        for queue, names in by_queue.items():
            stats = queues.get(queue)
            if stats is None or not stats.ready:
                continue
            flags = [await self.coordinator.add(SUSPENDED + name, 0, None) for name in names]
            if all(flag > 0 for flag in flags):
                count += stats.ready
        return count

    def _upcoming(self, now: float) -> int:
        start = from_timestamp(now)
        end = start + timedelta(seconds=self.interval)
        return sum(
            sum(1 for _ in ticks_between(periodic.schedule, start, end))
            for periodic in self.app.periodics.values()
        )


def _add(a: QueueStats | None, b: QueueStats) -> QueueStats:
    if a is None:
        return b
    return QueueStats(a.ready + b.ready, a.delayed + b.delayed, a.in_flight + b.in_flight)
