"""A task that kills its worker every time ends in the dead letters; the worker goes on."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from tests.worker.brokers import short_lease_broker
from tests.worker.helpers import spawn_worker, stop

from celeriac import App, PoisonMessage

pytestmark = pytest.mark.anyio

BOUND = 3


@pytest.fixture(params=["sqlite", "redis"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A broker URL with a 0.5 s visibility timeout, on SQLite or on Redis (own prefix)."""
    with short_lease_broker(request.param, tmp_path, 0.5) as url:
        yield url


async def test_a_message_that_kills_its_worker_is_dead_lettered_after_the_bound(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERIAC_MAX_DELIVERIES", str(BOUND))
    runs = tmp_path / "runs"
    app = App("failing", broker=broker)
    log = tmp_path / "worker.log"
    async with app:
        poison = app.send_task("failing.kill_my_worker", (str(runs),))
        others = [app.send_task("failing.ok") for _ in range(20)]
        workers = 0
        deadline = time.monotonic() + 60
        state = "PENDING"
        while state != "FAILURE":
            assert time.monotonic() < deadline, f"still {state} after {workers} workers"
            process = spawn_worker(broker, app="tests.worker.failing_tasks:app", log=log)
            workers += 1
            while process.poll() is None and state != "FAILURE":
                await anyio.sleep(0.1)
                state = await poison.get_state()
            if process.poll() is None:
                break  # it survived: the poison was stopped before killing it again
            assert process.returncode == 9, log.read_text()[-2000:]
        try:
            with pytest.raises(PoisonMessage, match=f"bound {BOUND}"):
                await poison
            assert [await r for r in others] == ["ok"] * 20
            assert await app.send_task("failing.ok") == "ok"  # the worker goes on serving
            letters = await app._bridge.call_async(lambda runtime: runtime.broker.dead_letters())
        finally:
            assert stop(process) == 0
    assert [d.id for d in letters] == [poison.id]
    assert letters[0].reason.startswith("PoisonMessage")
    assert len(runs.read_text().splitlines()) == BOUND  # it never ran a (BOUND+1)th time
    assert workers == BOUND + 1
    assert os.environ["CELERIAC_MAX_DELIVERIES"] == str(BOUND)
