"""run_check(): one run of a health check, sync or async, that never raises for the check."""

from __future__ import annotations

import logging
import threading

import anyio
import anyio.lowlevel
import pytest

from celeriac.failures import HealthCheck, HealthState, run_check

pytestmark = pytest.mark.anyio


async def healthy() -> HealthState:
    await anyio.lowlevel.checkpoint()
    return HealthState.HEALTHY


async def test_an_async_check_reports_its_state() -> None:
    check = await run_check(HealthCheck("api", healthy, every=10), now=100.0)
    assert (check.state, check.error, check.last_run) == (HealthState.HEALTHY, None, 100.0)


async def test_a_sync_check_runs_in_a_worker_thread() -> None:
    threads = []

    def probe() -> HealthState:
        threads.append(threading.get_ident())
        return HealthState.DEGRADED

    check = await run_check(HealthCheck("memory", probe), now=1.0)
    assert check.state is HealthState.DEGRADED
    assert threads != [threading.get_ident()]
    assert len(threads) == 1


async def test_a_function_returning_a_coroutine_is_awaited() -> None:
    check = await run_check(HealthCheck("wrapped", lambda: healthy()), now=0.0)
    assert check.state is HealthState.HEALTHY


async def test_a_failing_check_is_unhealthy_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> HealthState:
        raise ConnectionRefusedError("payments:443")

    with caplog.at_level(logging.ERROR, logger="celeriac.health"):
        check = await run_check(HealthCheck("payments", broken), now=5.0)
    assert check.state is HealthState.UNHEALTHY
    assert check.error == "raised ConnectionRefusedError: payments:443"
    assert check.last_run == 5.0
    [record] = caplog.records
    assert record.name == "celeriac.health"
    assert record.exc_info is not None


async def test_a_wrong_return_value_is_a_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    def says_ok() -> HealthState:
        return "ok"  # type: ignore[return-value]

    check = await run_check(HealthCheck("sloppy", says_ok), now=0.0)
    assert check.state is HealthState.UNHEALTHY
    assert check.error == "returned 'ok', not a HealthState"
    assert "sloppy returned 'ok', not a HealthState" in caplog.text


async def test_a_hung_async_check_times_out() -> None:
    async def hangs() -> HealthState:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    check = await run_check(HealthCheck("slow", hangs, every=60, timeout=0.01), now=0.0)
    assert check.state is HealthState.UNHEALTHY
    assert check.error == "timed out after 0.01 s"


async def test_a_hung_sync_check_times_out_without_holding_the_caller() -> None:
    release = threading.Event()

    def blocks() -> HealthState:
        release.wait(30)
        return HealthState.HEALTHY

    try:
        check = await run_check(HealthCheck("blocking", blocks, timeout=0.01), now=0.0)
    finally:
        release.set()
    assert check.error == "timed out after 0.01 s"


async def test_cancelling_the_caller_goes_through() -> None:
    results = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        results.append(await run_check(HealthCheck("api", healthy), now=0.0))
    assert scope.cancelled_caught
    assert results == []


def test_a_check_is_due_every_period() -> None:
    check = HealthCheck("api", healthy, every=10)
    assert check.due(0.0)
    ran = HealthCheck("api", healthy, every=10, state=HealthState.HEALTHY, last_run=100.0)
    assert not ran.due(109.9)
    assert ran.due(110.0)
    assert ran.limit == 10
    assert HealthCheck("api", healthy, every=10, timeout=2).limit == 2


def test_a_check_can_still_be_called_directly() -> None:
    assert HealthCheck("sync", lambda: HealthState.INSECURE)() is HealthState.INSECURE


@pytest.mark.parametrize(("every", "timeout"), [(0, None), (-1, None), (10, 0), (float("nan"), 1)])
def test_nonsense_periods_are_refused(every: float, timeout: float | None) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        HealthCheck("api", healthy, every=every, timeout=timeout)


def test_the_function_must_be_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        HealthCheck("api", HealthState.HEALTHY)  # type: ignore[arg-type]
