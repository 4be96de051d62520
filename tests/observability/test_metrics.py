"""The autoscaler's Prometheus gauges: values, labels, forgotten queues, the HTTP server."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from celeriac.abc import QueueStats
from celeriac.observability.metrics import AutoscaleMetrics
from celeriac.scheduler.autoscale import Autoscaler, Recommendation, Sample

SAMPLE = Sample(
    at=100.0, ready=13, delayed=4, in_flight=2, suspended=3, upcoming=1, workers=3, capacity=6
)


def values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the text format, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def advise(sample: Sample = SAMPLE) -> Recommendation:
    return Autoscaler(per_worker=2, cooldown=5.0).observe(sample)


def test_update_then_render_shows_every_gauge() -> None:
    metrics = AutoscaleMetrics()
    advice = advise()
    assert (advice.direction, advice.workers, advice.demand) == ("up", 7, 13)
    queues = {"default": QueueStats(10, 4, 1), "mail": QueueStats(3, 0, 1)}
    metrics.update(SAMPLE, advice, queues)
    got = values(metrics.render())
    assert got[("celeriac_queue_ready", (("queue", "default"),))] == 10
    assert got[("celeriac_queue_delayed", (("queue", "default"),))] == 4
    assert got[("celeriac_queue_in_flight", (("queue", "default"),))] == 1
    assert got[("celeriac_queue_ready", (("queue", "mail"),))] == 3
    assert got[("celeriac_workers", ())] == 3
    assert got[("celeriac_capacity", ())] == 6
    assert got[("celeriac_demand", ())] == 13  # 13 - 3 + 2 + 1
    assert got[("celeriac_desired_workers", ())] == 7
    assert got[("celeriac_desired_concurrency", ())] == 13
    assert got[("celeriac_autoscale_direction", ())] == 1
    assert got[("celeriac_autoscale_cooldown_seconds", ())] == 5.0


@pytest.mark.parametrize(("capacity", "direction"), [(6, 0), (40, -1)])
def test_direction_gauge_reads_hold_as_zero_and_down_as_minus_one(
    capacity: int, direction: int
) -> None:
    metrics = AutoscaleMetrics()
    sample = Sample(0.0, 3, 0, 0, 0, 0, 3, capacity)
    metrics.update(sample, Autoscaler().observe(sample), {})
    assert values(metrics.render())[("celeriac_autoscale_direction", ())] == direction


def test_queues_that_disappear_are_forgotten() -> None:
    metrics = AutoscaleMetrics()
    advice = advise()
    metrics.update(SAMPLE, advice, {"a": QueueStats(1, 2, 3), "b": QueueStats(4, 5, 6)})
    metrics.update(SAMPLE, advice, {"b": QueueStats(7, 8, 9)})
    got = values(metrics.render())
    labelled = {labels for (name, labels) in got if name.startswith("celeriac_queue_")}
    assert labelled == {(("queue", "b"),)}
    assert got[("celeriac_queue_in_flight", (("queue", "b"),))] == 9


def test_gauges_live_in_their_own_registry() -> None:
    first, second = AutoscaleMetrics(), AutoscaleMetrics()  # no duplicate-name clash
    first.update(SAMPLE, advise(), {"q": QueueStats(1, 0, 0)})
    assert ("celeriac_queue_ready", (("queue", "q"),)) not in values(second.render())
    assert REGISTRY.get_sample_value("celeriac_workers") is None
    shared = CollectorRegistry()
    assert AutoscaleMetrics(shared).registry is shared


def test_serve_exposes_metrics_over_http_until_closed() -> None:
    metrics = AutoscaleMetrics()
    metrics.update(SAMPLE, advise(), {"default": QueueStats(10, 4, 1)})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = metrics.serve(port)
    assert (server.host, server.port) == ("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        assert values(body)[("celeriac_queue_ready", (("queue", "default"),))] == 10
        assert values(body)[("celeriac_desired_workers", ())] == 7
    finally:
        server.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=10)
