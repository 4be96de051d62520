"""Prometheus gauges of the autoscaler's inputs and advice (needs the ``metrics`` extra).

:class:`AutoscaleMetrics` keeps its own ``CollectorRegistry`` (never
prometheus-client's global one), so two schedulers in one process, or two tests,
do not share gauges. Feed it with :meth:`~AutoscaleMetrics.update` after each
sampling; read it with :meth:`~AutoscaleMetrics.render` (the text format) or
expose it with :meth:`~AutoscaleMetrics.serve` (an HTTP server on a thread).

The gauges, all prefixed ``celeriac_``: ``queue_ready``, ``queue_delayed`` and
``queue_in_flight`` (label ``queue``); ``workers``, ``capacity``, ``demand``,
``desired_workers``, ``desired_concurrency``; ``autoscale_direction`` (-1 down,
0 hold, 1 up) and ``autoscale_cooldown_seconds`` (left before the next up/down).

Only this module imports ``prometheus_client``: the rest of celeriac runs without it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import TracebackType
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, generate_latest, start_http_server

from celeriac.abc import QueueStats
from celeriac.scheduler.autoscale import Recommendation, Sample

__all__ = ["AutoscaleMetrics", "MetricsServer"]

_DIRECTIONS = {"down": -1, "hold": 0, "up": 1}


class MetricsServer:
    """A running ``/metrics`` HTTP server; :meth:`close` stops it (so does ``with``)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def host(self) -> str:
        """The address it listens on."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose, if asked for port 0)."""
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop serving, close the socket and wait for the server's thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AutoscaleMetrics:
    """The autoscaler's gauges in a registry of their own (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"celeriac_{name}", doc, labels, registry=self.registry)

        self._ready = gauge("queue_ready", "Messages due now, per queue.", ("queue",))
        self._delayed = gauge("queue_delayed", "Messages waiting for their eta.", ("queue",))
        self._in_flight = gauge("queue_in_flight", "Messages handed out and not acked.", ("queue",))
        self._workers = gauge("workers", "Live workers.")
        self._capacity = gauge("capacity", "Sum of the live workers' maximum concurrency.")
        self._demand = gauge("demand", "Runnable messages: ready - suspended + in flight + ticks.")
        self._desired_workers = gauge("desired_workers", "Workers the autoscaler advises.")
        self._desired_concurrency = gauge(
            "desired_concurrency", "Total concurrency the autoscaler advises."
        )
        self._direction = gauge("autoscale_direction", "Last advice: -1 down, 0 hold, 1 up.")
        self._cooldown = gauge(
            "autoscale_cooldown_seconds", "Seconds left before the next up/down may happen."
        )
        self._queues: set[str] = set()

    def update(
        self,
        sample: Sample,
        recommendation: Recommendation,
        queues: Mapping[str, QueueStats],
    ) -> None:
        """Set every gauge from one sampling; queues absent from ``queues`` are dropped."""
        for name in self._queues - queues.keys():
            for per_queue in (self._ready, self._delayed, self._in_flight):
                per_queue.remove(name)
        for name, stats in queues.items():
            self._ready.labels(queue=name).set(stats.ready)
            self._delayed.labels(queue=name).set(stats.delayed)
            self._in_flight.labels(queue=name).set(stats.in_flight)
        self._queues = set(queues)
        self._workers.set(sample.workers)
        self._capacity.set(recommendation.capacity)
        self._demand.set(recommendation.demand)
        self._desired_workers.set(recommendation.workers)
        self._desired_concurrency.set(recommendation.concurrency)
        self._direction.set(_DIRECTIONS[recommendation.direction])
        self._cooldown.set(max(0.0, recommendation.cooldown_until - recommendation.at))

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Serve the registry over HTTP on a daemon thread (port 0: any free port)."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(server, thread)
