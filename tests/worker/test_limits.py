"""Concurrency limits and rate limits through a real worker (in this process, on SQLite)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import anyio
import pytest

from celeriac import App, Limit, RateLimit, Worker

pytestmark = pytest.mark.anyio

Running = Callable[..., AbstractAsyncContextManager[Worker]]


@pytest.fixture
def app(sqlite_url: str) -> App:
    """An app with no retries on a fresh SQLite file."""
    return App("limits", broker=sqlite_url, retry=None)


class Overlap:
    """Counts runs going on at once, by key."""

    def __init__(self) -> None:
        self.now: dict[str, int] = {}
        self.most: dict[str, int] = {}

    async def run(self, key: str, seconds: float) -> None:
        self.now[key] = self.now.get(key, 0) + 1
        self.most[key] = max(self.most.get(key, 0), self.now[key])
        try:
            await anyio.sleep(seconds)
        finally:
            self.now[key] -= 1


@pytest.mark.parametrize("scope", ["global", "worker"])
async def test_a_concurrency_limit_is_never_exceeded(
    app: App, running: Running, scope: str
) -> None:
    overlap = Overlap()

    async def busy(n: int) -> int:
        await overlap.run("all", 0.05)
        return n

    app.register("t.busy", busy, concurrency=Limit(2, scope=scope))  # type: ignore[arg-type]
    async with running(app):
        with anyio.fail_after(20):
            results = [app.send_task("t.busy", (n,)) for n in range(12)]
            assert [await r for r in results] == list(range(12))
    assert overlap.most["all"] == 2


async def test_a_concurrency_token_limits_each_key_alone(app: App, running: Running) -> None:
    overlap = Overlap()

    async def sync_account(user_id: int, step: int) -> None:
        await overlap.run(str(user_id), 0.05)
        await overlap.run("all", 0.0)

    app.register("t.sync", sync_account, concurrency=Limit(1, key="user_id"))
    async with running(app):
        with anyio.fail_after(20):
            results = [app.send_task("t.sync", (u, s)) for s in range(4) for u in (1, 2, 3)]
            for r in results:
                await r
    assert overlap.most["1"] == overlap.most["2"] == overlap.most["3"] == 1


async def test_a_limit_of_zero_holds_the_task_until_the_measure_rises(
    app: App, running: Running
) -> None:
    free = [0.0]
    runs: list[int] = []

    async def query(n: int) -> int:
        runs.append(n)
        return n

    async def other() -> str:
        return "flows"

    limit = Limit(range=(0, 4), measure=lambda: free[0], every=0.1)
    app.register("t.query", query, concurrency=limit)
    app.register("t.other", other)
    async with running(app):
        pending = [app.send_task("t.query", (n,)) for n in range(3)]
        assert await app.send_task("t.other") == "flows"  # other tasks keep flowing
        await anyio.sleep(0.3)
        assert runs == []  # a limit of 0: its messages wait
        free[0] = 2
        with anyio.fail_after(10):
            assert sorted([await r for r in pending]) == [0, 1, 2]


@pytest.mark.parametrize("scope", ["global", "worker"])
async def test_a_rate_limit_spaces_runs_evenly(app: App, running: Running, scope: str) -> None:
    starts: list[float] = []

    async def call_api(n: int) -> int:
        starts.append(time.monotonic())
        return n

    app.register("t.api", call_api, rate_limit=RateLimit("20/s", scope=scope))  # type: ignore[arg-type]
    async with running(app):
        with anyio.fail_after(20):
            t0 = time.monotonic()  # before the first unit is counted
            results = [app.send_task("t.api", (n,)) for n in range(10)]
            for r in results:
                await r
    # 20/s with a burst of 1 (GCRA): the first unit goes when asked for (at or after
    # t0), and each next one a whole interval of 50 ms after the one before, however
    # late runs wake up. So the i-th run to start cannot start before t0 + i * 50 ms
    # (a late wake-up only delays it); a burst puts a run a whole interval early.
    assert len(starts) == 10
    early = [i for i, start in enumerate(starts) if start - t0 < i * 0.05 - 0.005]
    assert early == [], [round(start - t0, 4) for start in starts]


def test_limit_options_are_checked(app: App) -> None:
    async def task() -> None: ...

    with pytest.raises(ValueError, match="not a rate"):
        app.register("t.bad_rate", task, rate_limit="fast")
    with pytest.raises(ValueError, match="either a limit or a range"):
        Limit()
    with pytest.raises(TypeError, match="concurrency must be"):
        app.register("t.bad_limit", task, concurrency="2")  # type: ignore[arg-type]


async def test_a_suspended_task_waits_until_it_is_resumed(app: App, running: Running) -> None:
    runs: list[int] = []

    async def report(n: int) -> int:
        runs.append(n)
        return n

    async def other() -> str:
        return "flows"

    app.register("t.report", report)
    app.register("t.other", other)
    async with running(app) as worker:
        await app.suspend_async("t.report")
        with anyio.fail_after(10):  # workers follow the store's flags about once a second
            while "t.report" not in worker.stats()["suspended"]:
                await anyio.sleep(0.02)
        pending = app.send_task("t.report", (1,))
        assert await app.send_task("t.other") == "flows"  # other tasks keep flowing
        await anyio.sleep(0.5)
        assert runs == []
        await app.resume_async("t.report")
        with anyio.fail_after(10):
            assert await pending == 1
