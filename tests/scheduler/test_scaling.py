"""Autoscaling signals end to end: sampled from a real broker, led by one scheduler,
published in the sink, followed by a worker's budgets, served as Prometheus metrics."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anyio
import pytest
from tests.brokers._shared import running_worker

from celeriac import App
from celeriac.brokers import Hub
from celeriac.coordination import open_coordinator
from celeriac.scheduler.autoscale import Autoscaler
from celeriac.scheduler.scaling import AutoscaleSignals, read_recommendation
from celeriac.worker.budget import Budget

pytestmark = pytest.mark.anyio


def build(url: str) -> App:
    app = App("scaling", broker=url, retry=None)

    def work(n: int) -> int:
        time.sleep(0.05)
        return n

    app.register("scaling.work", work)
    return app


async def test_one_scheduler_leads_and_a_backlog_with_no_workers_means_up(
    sqlite_url: str,
) -> None:
    app = build(sqlite_url)
    coordinator = open_coordinator(sqlite_url, Hub())
    await coordinator.connect()
    try:
        async with app:
            for n in range(30):
                app.send_task("scaling.work", (n,))
            await app.send_task("scaling.work", (30,)).confirmed_async()
            runtime = app._runtime_here()
            first, second = (
                # A long interval: the leader's lease (3 intervals) outlasts a slow step.
                AutoscaleSignals(app, coordinator, name=n, interval=5.0)
                for n in ("a", "b")
            )
            up = await first.step(runtime)
            assert await second.step(runtime) is None  # a leads; b only follows
            assert up is not None
            assert (up.direction, up.demand, up.workers) == ("up", 31, 31)  # 1 per worker: unknown
            published = await read_recommendation(runtime.sink, "scaling")
            assert published == up

            await app.suspend_async("scaling.work")  # its messages cannot run: no demand
            held = await first.step(runtime)
            assert held is not None
            assert held.demand == 0

            # The leader stops and hands over; the other leads from its next step.
            async with anyio.create_task_group() as tg:
                await tg.start(first.run)
                first.request_stop()
            assert await second.step(runtime) is not None
            assert second.leading
    finally:
        await coordinator.close()


async def test_a_workers_budgets_follow_the_recommendation(sqlite_url: str) -> None:
    app = build(sqlite_url)
    threads = Budget(1, 8)
    # The worker consumes another queue: the backlog stays, and its budget has no
    # local reason to grow; only the recommendation can raise it.
    async with running_worker(app, queues=["other"], budgets={"thread": threads}) as worker:
        worker.scaling.interval = 0.1
        coordinator = open_coordinator(sqlite_url, Hub())
        await coordinator.connect()
        try:
            signals = AutoscaleSignals(
                app, coordinator, interval=0.2, autoscaler=Autoscaler(cooldown=0)
            )
            for n in range(200):
                app.send_task("scaling.work", (n,))
            runtime = app._runtime_here()

            async def advised(direction: str) -> None:
                while signals.latest is None or signals.latest.direction != direction:
                    await anyio.sleep(0.05)

            async with anyio.create_task_group() as tg:
                await tg.start(signals.run)  # renews the recommendation every 0.2 s
                with anyio.fail_after(10):
                    await advised("up")
                    while worker.scaling.direction != "up":
                        await anyio.sleep(0.05)
                assert threads.limit == 8  # held at the maximum while the cluster scales up
                await runtime.broker.purge("default")  # the backlog is gone: hold
                with anyio.fail_after(10):
                    await advised("hold")
                    while threads.limit != 1:  # its own algorithm again: nothing runs here
                        await anyio.sleep(0.05)
                signals.request_stop()
        finally:
            await coordinator.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_celeriac_scheduler_serves_the_signals_as_prometheus_metrics(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    app = build(url)
    for n in range(12):
        app.send_task("scaling.work", (n,)).confirmed()
    app.close()
    port = _free_port()
    env_app = "tests.scheduler.scaling_app:app"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celeriac",
            "scheduler",
            env_app,
            "--autoscale-interval",
            "0.2",
            "--metrics-port",
            str(port),
        ],
        env={**os.environ, "CELERIAC_BROKER": url},
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
                if "celeriac_autoscale_direction 1.0" in text:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert 'celeriac_queue_ready{queue="default"} 12.0' in text, text[-2000:]
        assert "celeriac_autoscale_direction 1.0" in text
        assert "celeriac_demand 12.0" in text
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err.decode()[-3000:]
