"""celeriac on a broker server: the workloads the peers run on Redis, on any server.

The same four workloads as the peers (sizes and metrics from ``redis_common``):
enqueue, end to end with one worker process, I/O-bound with 100 in flight, and one
round trip at a time. A :class:`Server` says where the broker (and, where the broker
keeps no results, the results sink) is, and how to empty what the bench keeps there;
:func:`scenarios` makes the four scenarios for it. ``celeriac_redis.py`` (beside the
peers), ``celeriac_amqp.py``, ``celeriac_nats.py`` and ``celeriac_postgres.py`` each
define one.

The bench process produces (``bench.apps.build(broker, sinks)``, asyncio with uvloop);
a worker subprocess runs, ``python -m celeriac worker bench.apps:app -Q bench``, told
its broker by ``CELERIAC_BROKER`` and its sinks by ``CELERIAC_SINKS``.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from bench.apps import NOOP, SLEEP, build
from bench.harness import Metric, RunContext, Scenario, Ticker
from bench.systems import redis_common as rc
from bench.systems.celeriac_common import (
    await_all,
    queue_stats,
    run_async,
    start_worker,
    stop_worker,
    watching,
)

__all__ = ["SYSTEM", "Server", "scenarios"]

SYSTEM = "celeriac"

Repetition = Callable[[RunContext], dict[str, float]]


@dataclass(frozen=True)
class Server:
    """One server celeriac is measured on, and what the bench keeps there."""

    name: str
    """Scenario names (``amqp-e2e``) and workload keys (``amqp.e2e.noop``)."""
    label: str
    """How the tables name it: ``RabbitMQ``."""
    broker: str
    """The broker URL (with options naming the bench's own namespace, schema or database)."""
    reset: Callable[[], None]
    """Empties what the bench keeps on the server(s); called before every repetition."""
    backend: tuple[str, ...]
    """celeriac's modules this needs (the run fails with a plain reason without them)."""
    client: str
    """The client library's module, installed with celeriac's extra ``extra``."""
    extra: str
    sinks: Mapping[str, str] = field(default_factory=dict)
    """Sinks for brokers that keep no results (empty: results beside the broker)."""
    tidy: bool = False
    """Reset after every repetition too, so nothing is left on the server."""
    peers: bool = False
    """The peers measure these workloads too: shared groups, and targets against them."""

    def require(self) -> None:
        """Fail the run at once, with a plain reason, when the backend or client is missing."""
        missing = [m for m in self.backend if importlib.util.find_spec(m) is None]
        if missing:
            raise RuntimeError(
                f"celeriac has no {self.label} backend yet ({', '.join(missing)} missing)"
            )
        if importlib.util.find_spec(self.client) is None:
            raise RuntimeError(
                f"the {self.label} client is not installed (pip install 'celeriac[{self.extra}]')"
            )


def _on(server: Server, body: Repetition) -> Repetition:
    """``body`` on an emptied server; with ``tidy``, emptied again afterwards."""

    def repetition(ctx: RunContext) -> dict[str, float]:
        server.require()
        server.reset()
        if not server.tidy:
            return body(ctx)
        try:
            values = body(ctx)
        except BaseException:
            ctx.close()  # stop the worker first, so it recreates nothing once emptied
            try:
                server.reset()
            except Exception as exc:  # the run's own error is the one to report
                ctx.progress(f"could not empty {server.label} after the failure: {exc}")
            raise
        server.reset()
        return values

    return repetition


def _enqueue(server: Server) -> Repetition:
    """Publish N no-ops with no worker running; the clock stops when all are on the server."""

    def repetition(ctx: RunContext) -> dict[str, float]:
        async def main() -> tuple[float, int]:
            app = build(server.broker, server.sinks or None)
            noop = app.tasks[NOOP]
            async with app:
                started = time.perf_counter()
                for _ in range(rc.ENQUEUE_TASKS):
                    noop.delay()
            # Leaving ``async with app`` flushes the publisher: every message is stored.
            elapsed = time.perf_counter() - started
            stats = await queue_stats(server.broker)
            return elapsed, stats.ready

        elapsed, queued = run_async(main)
        if queued != rc.ENQUEUE_TASKS:
            raise RuntimeError(f"{rc.ENQUEUE_TASKS} published but {queued} in the queue")
        return {"enqueue": rc.ENQUEUE_TASKS / elapsed}

    return repetition


def _throughput(
    server: Server,
    task_name: str,
    count: int,
    args: Sequence[Any] = (),
    worker_args: Sequence[str] = (),
    warm_up: int = rc.WARM_UP_TASKS,
) -> Repetition:
    """Publish ``count`` calls as fast as possible, then await every result in turn."""

    def repetition(ctx: RunContext) -> dict[str, float]:
        worker = start_worker(ctx, server.broker, *worker_args, sinks=server.sinks)
        window = rc.Window(worker)

        async def main() -> None:
            app = build(server.broker, server.sinks or None)
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


def _latency(server: Server) -> Repetition:
    """One call at a time: publish, await its result, next."""

    def repetition(ctx: RunContext) -> dict[str, float]:
        worker = start_worker(ctx, server.broker, sinks=server.sinks)

        async def main() -> list[float]:
            app = build(server.broker, server.sinks or None)
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

    return repetition


def _metrics(server: Server, make: Callable[..., list[Metric]]) -> tuple[Metric, ...]:
    """The Redis metrics of a workload, as measured on ``server``.

    On Redis, celeriac's own (with the targets against the peers). Elsewhere no peer
    runs: the same metrics, renamed for the server (``Redis ...`` -> ``RabbitMQ ...``,
    ``redis.e2e.noop`` -> ``amqp.e2e.noop``) and informational.
    """
    if server.peers:
        return tuple(make(celeriac=True))
    renamed = []
    for metric in make():
        if not (metric.label.startswith("Redis") and metric.workload.startswith("redis.")):
            raise ValueError(f"not a Redis metric: {metric}")
        renamed.append(
            replace(
                metric,
                label=server.label + metric.label.removeprefix("Redis"),
                workload=server.name + metric.workload.removeprefix("redis"),
                peer_target=None,
                informational=True,
            )
        )
    return tuple(renamed)


def _enqueue_metrics(celeriac: bool = False) -> list[Metric]:
    return rc.enqueue_metrics()


def scenarios(server: Server) -> list[Scenario]:
    """``<name>-e2e``, ``-enqueue``, ``-io`` and ``-latency`` on ``server``.

    Each workload is a ``group``: on Redis with the peers' scenarios of the same
    workload, elsewhere with the other servers' (``servers-e2e``...), so the runs of
    one workload are interleaved and its rows stay together in the table.
    """
    name, label = server.name, server.label
    group = "redis" if server.peers else "servers"
    return [
        Scenario(
            f"{name}-e2e",
            SYSTEM,
            f"{label}, {rc.E2E_TASKS:,} async no-ops, publish all then await all, 1 worker process",
            _metrics(server, rc.e2e_metrics),
            _on(server, _throughput(server, NOOP, rc.E2E_TASKS)),
            group=f"{group}-e2e",
        ),
        Scenario(
            f"{name}-enqueue",
            SYSTEM,
            f"{label}, publish {rc.ENQUEUE_TASKS:,} no-ops and flush, no worker",
            _metrics(server, _enqueue_metrics),
            _on(server, _enqueue(server)),
            group=f"{group}-enqueue",
        ),
        Scenario(
            f"{name}-io",
            SYSTEM,
            f"{label}, {rc.IO_TASKS:,} async {rc.SLEEP_SECONDS * 1000:.0f} ms sleeps,"
            f" --async-concurrency {rc.IO_IN_FLIGHT}",
            _metrics(server, rc.io_metrics),
            _on(
                server,
                _throughput(
                    server,
                    SLEEP,
                    rc.IO_TASKS,
                    (rc.SLEEP_SECONDS,),
                    ("--async-concurrency", str(rc.IO_IN_FLIGHT)),
                    warm_up=200,
                ),
            ),
            group=f"{group}-io",
        ),
        Scenario(
            f"{name}-latency",
            SYSTEM,
            f"{label} round trip, one call at a time, {rc.LATENCY_CALLS} calls",
            _metrics(server, rc.latency_metrics),
            _on(server, _latency(server)),
            group=f"{group}-latency",
        ),
    ]
