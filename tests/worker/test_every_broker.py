"""The API contract's scenarios with a real worker on every broker, from asyncio and trio."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import pytest
from tests.apps.basic import PaymentDeclined, make_app
from tests.worker.brokers import FACTORIES
from tests.worker.helpers import lines, worker_process

from celeriac import App, TaskRevoked, Worker

pytestmark = pytest.mark.anyio


@pytest.fixture(params=sorted(FACTORIES))
def broker_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A broker of this test's own; the sinks it needs are in CELERIAC_SINKS.

    The environment is where both an app made here and the app a worker process
    imports (``tests.apps.basic:app``) read their settings from.
    """
    with FACTORIES[request.param](tmp_path) as backend:
        if backend.sinks:
            monkeypatch.setenv("CELERIAC_SINKS", json.dumps(backend.sinks))
        yield backend.url


async def test_every_kind_runs_and_returns_its_result(broker_url: str) -> None:
    app = make_app(broker_url)
    with worker_process(broker_url) as worker:
        async with app:
            with anyio.fail_after(30):
                assert await app.send_task("basic.add", (1, 2)) == 3
                assert await app.send_task("basic.mul", (6, 7)) == 42
                assert await app.send_task("basic.pid") == worker.pid
                assert await app.send_task("basic.boxed_pid") not in (worker.pid, os.getpid())
                with pytest.raises(PaymentDeclined):
                    await app.send_task("basic.decline", (5,))
                results = [app.send_task("basic.add", (i, i)) for i in range(200)]
                assert [await r for r in results] == [2 * i for i in range(200)]


async def test_countdown_and_revoke(broker_url: str, tmp_path: Path) -> None:
    app = make_app(broker_url)
    log = tmp_path / "log"
    with worker_process(broker_url):
        async with app:
            with anyio.fail_after(30):
                started = anyio.current_time()
                assert await app.send_task("basic.add", (2, 2), countdown=1.0) == 4
                assert anyio.current_time() - started >= 0.95
                never = app.send_task("basic.record", (str(log), "never"), countdown=1.0)
                await never.revoke_async()
                running = app.send_task("basic.sleep", (30, str(log), "long"))
                while not any(line.startswith("start long") for line in lines(log)):
                    await anyio.sleep(0.02)
                await running.revoke_async()
                with pytest.raises(TaskRevoked):
                    await running
                with pytest.raises(TaskRevoked):
                    await never
                await anyio.sleep(1.2)
    assert "never" not in lines(log)


def test_sync_caller(broker_url: str) -> None:
    app: App = make_app(broker_url)
    with worker_process(broker_url):
        try:
            assert app.send_task("basic.mul", (3, 3)).get(timeout=30) == 9
        finally:
            app.close()


async def test_a_worker_in_the_callers_loop_runs_every_kind_of_task(
    broker_url: str,
    tmp_path: Path,
    running: Callable[[App], AbstractAsyncContextManager[Worker]],
) -> None:
    app = make_app(broker_url)
    log = tmp_path / "log"
    async with running(app):
        with anyio.fail_after(30):
            assert await app.send_task("basic.add", (1, 2)) == 3
            assert await app.send_task("basic.mul", (3, 4)) == 12
            assert await app.send_task("basic.boxed_mul", (5, 6)) == 30
            started = anyio.current_time()
            assert await app.send_task("basic.add", (1, 1), countdown=0.4) == 2
            assert anyio.current_time() - started >= 0.35
            sent = anyio.current_time()
            # The revocation is stored long before the eta, however slow the machine.
            revoked = app.send_task("basic.record", (str(log), "x"), countdown=1.5)
            await revoked.revoke_async()
            with pytest.raises(TaskRevoked):
                await revoked.get_async(timeout=3)
            # Past the eta: the message is due, and the worker must drop it, not run it.
            await anyio.sleep(max(0.0, sent + 1.5 + 0.3 - anyio.current_time()))
            results = [app.send_task("basic.add", (n, n)) for n in range(200)]
            assert [await r.get_async(timeout=10) for r in results] == [2 * n for n in range(200)]
    assert not log.exists()
