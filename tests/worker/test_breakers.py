"""Circuit breakers and health checks through a real worker: suspended tasks wait, others flow."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import anyio
import pytest

from celeriac import App, CircuitBreaker, HealthState, Retry, Worker

pytestmark = pytest.mark.anyio

Running = Callable[..., AbstractAsyncContextManager[Worker]]


class Flaky(Exception):
    """The service the tasks below call is down."""


@pytest.fixture
def app(sqlite_url: str) -> App:
    """An app with no retries: each failure is final, and counts once for a breaker."""
    return App("breakers", broker=sqlite_url, retry=None)


async def test_a_tripped_breaker_suspends_the_task_until_it_half_opens(
    app: App, running: Running
) -> None:
    starts: list[float] = []
    broken = [True]

    async def call_api(n: int) -> int:
        starts.append(time.monotonic())
        if broken[0]:
            raise Flaky(f"api down ({n})")
        return n

    async def other() -> str:
        return "flows"

    reset_after = 2.0
    app.register("t.api", call_api, breaker=CircuitBreaker(failures=2, reset_after=reset_after))
    app.register("t.other", other)
    async with running(app) as worker:
        for n in (1, 2):
            with pytest.raises(Flaky):
                await app.send_task("t.api", (n,))
        assert "t.api" in worker.stats()["suspended"]
        # From here on the API works: the next run succeeds whenever it comes, so how
        # long the lines below take cannot change the outcome; when it came is checked.
        broken[0] = False
        later = [app.send_task("t.api", (n,)) for n in (3, 4)]
        assert await app.send_task("t.other") == "flows"  # the queue keeps flowing
        with anyio.fail_after(10):
            assert [await r for r in later] == [3, 4]
        assert worker.stats()["suspended"] == {}
    assert len(starts) == 4
    # The second run started before the failure that tripped the breaker: nothing of
    # t.api ran until the breaker half-opened, ``reset_after`` after the trip.
    assert starts[2] - starts[1] >= reset_after - 0.05


async def test_a_failed_trial_trips_it_again_for_longer(app: App, running: Running) -> None:
    starts: list[float] = []

    async def down() -> None:
        starts.append(time.monotonic())
        raise Flaky("still down")

    breaker = CircuitBreaker(failures=1, reset_after=0.3, growth="exponential")
    app.register("t.down", down, breaker=breaker)
    async with running(app):
        for _ in range(3):
            with anyio.fail_after(10), pytest.raises(Flaky):
                await app.send_task("t.down")
    assert len(starts) == 3
    first_gap, second_gap = starts[1] - starts[0], starts[2] - starts[1]
    assert first_gap >= 0.25  # open 0.3 s after the first trip...
    assert second_gap >= 0.55  # ...then 0.6 s after the failed trial


async def test_health_checks_trip_breakers_and_failing_checks_are_only_logged(
    app: App, running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    health = [HealthState.UNHEALTHY]

    @app.health_check(every=0.05)
    def payments_api() -> HealthState:
        return health[0]

    @app.health_check(every=0.05)
    def broken_probe() -> HealthState:
        raise RuntimeError("the probe itself is broken")

    runs: list[int] = []

    async def charge(n: int) -> int:
        runs.append(n)
        return n

    breaker = CircuitBreaker(
        failures=3,
        reset_after=2.0,  # far longer than the check below takes: the trip still holds
        health_checks=[payments_api],
        thresholds={HealthState.UNHEALTHY: 2},
    )
    app.register("t.charge", charge, breaker=breaker)
    async with running(app) as worker:
        with anyio.fail_after(5):
            while "t.charge" not in worker.stats()["suspended"]:
                await anyio.sleep(0.02)
        pending = app.send_task("t.charge", (1,))
        await anyio.sleep(0.2)
        assert runs == []  # suspended by the health check: its message waits
        health[0] = HealthState.HEALTHY
        with anyio.fail_after(10):
            assert await pending == 1
        states = worker.stats()["health"]
        assert states[payments_api.name] == "HEALTHY"
        assert states[broken_probe.name] == "UNHEALTHY"
        assert any(name.startswith("broker ") for name in states)
    assert "the probe itself is broken" in caplog.text


def test_breaker_options_are_checked(app: App) -> None:
    async def task() -> None: ...

    with pytest.raises(Exception, match="breaker must be a CircuitBreaker"):
        app.register("t.bad", task, breaker=Retry())  # type: ignore[arg-type]


async def test_tasks_guarding_one_service_share_its_breaker(app: App, running: Running) -> None:
    runs: list[tuple[str, float]] = []

    async def charge() -> None:
        runs.append(("charge", time.monotonic()))
        raise Flaky("payments down")

    async def refund() -> str:
        runs.append(("refund", time.monotonic()))
        return "refunded"

    reset_after = 2.0
    payments = CircuitBreaker(failures=2, reset_after=reset_after, service="payments")
    app.register("t.charge", charge, breaker=payments)
    app.register("t.refund", refund, breaker=payments)
    async with running(app):
        for _ in range(2):
            with pytest.raises(Flaky):
                await app.send_task("t.charge")
        later = app.send_task("t.refund")  # another task of the same service
        with anyio.fail_after(10):
            assert await later == "refunded"  # its trial run, once the breaker half-opens
    assert [name for name, _ in runs] == ["charge", "charge", "refund"]
    # The second charge started before its failure tripped the service's breaker: the
    # refund waited for it to half-open, ``reset_after`` after the trip.
    assert runs[2][1] - runs[1][1] >= reset_after - 0.05
