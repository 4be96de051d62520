"""Retries by default, sections, dead letters and time limits through a real worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import pytest
from tests.worker.failing_tasks import Flaky, register

from celeriac import App, Retry, TaskRevoked, TimeLimitExceeded, Worker, optional, poisonous, retry

pytestmark = pytest.mark.anyio

Running = Callable[..., AbstractAsyncContextManager[Worker]]

FAST = Retry(max_retries=2, backoff=0.01, max_backoff=0.02, jitter=False)


@pytest.fixture
def app(sqlite_url: str) -> App:
    """An app whose default policy retries twice, quickly."""
    return register(App("failing", broker=sqlite_url, retry=FAST))


def _runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def _dead_letters(app: App) -> list[tuple[str, str]]:
    async with app:
        letters = await app._bridge.call_async(lambda runtime: runtime.broker.dead_letters())
    return [(d.id, d.reason) for d in letters]


async def test_a_failing_task_is_retried_then_succeeds(app: App, running: Running) -> None:
    runs: list[float] = []

    async def flaky() -> int:
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise Flaky(f"run {len(runs)}")
        return len(runs)

    app.register("t.flaky", flaky)
    async with running(app):
        assert await app.send_task("t.flaky") == 3
    assert len(runs) == 3


async def test_exhausted_retries_fail_with_the_error_and_leave_a_dead_letter(
    app: App, running: Running
) -> None:
    runs: list[int] = []

    def always() -> None:  # a thread task
        runs.append(1)
        raise Flaky("still broken")

    app.register("t.always", always)
    async with running(app):
        result = app.send_task("t.always")
        with pytest.raises(Flaky, match="still broken"):
            await result
    assert len(runs) == 3  # the first run and two retries
    letters = await _dead_letters(app)
    assert [id for id, _ in letters] == [result.id]
    assert letters[0][1].startswith("RetriesExhausted: failed after 2 retries: Flaky")


async def test_a_retry_waits_for_its_backoff(app: App, running: Running) -> None:
    runs: list[float] = []

    async def slow_to_recover() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise Flaky("once")

    app.register("t.recover", slow_to_recover, retry=Retry(1, backoff=0.4, jitter=False))
    async with running(app):
        await app.send_task("t.recover")
    assert runs[1] - runs[0] >= 0.35  # the retry was a delayed message, not an immediate rerun


async def test_retry_none_opts_out(app: App, running: Running) -> None:
    runs: list[int] = []

    async def once() -> None:
        runs.append(1)
        raise Flaky("no second chance")

    app.register("t.once", once, retry=None)
    async with running(app):
        with pytest.raises(Flaky):
            await app.send_task("t.once")
    assert runs == [1]
    [(_, reason)] = await _dead_letters(app)
    assert reason.startswith("Failed (no retry policy)")


@pytest.mark.parametrize("kind", ["async", "thread"])
async def test_a_poisonous_section_is_never_retried(app: App, running: Running, kind: str) -> None:
    runs: list[int] = []

    def body() -> None:
        runs.append(1)
        with poisonous():
            raise ValueError("this input will never work")

    async def as_coroutine() -> None:
        body()

    app.register("t.poison", as_coroutine if kind == "async" else body)
    async with running(app):
        with pytest.raises(ValueError, match="never work"):
            await app.send_task("t.poison")
    assert runs == [1]
    [(_, reason)] = await _dead_letters(app)
    assert reason.startswith("Poisonous:")


async def test_a_retry_section_overrides_the_task_policy(app: App, running: Running) -> None:
    runs: list[int] = []

    async def sectioned() -> int:
        runs.append(1)
        if len(runs) <= 3:
            with retry(max_retries=3, interval_start=0, interval_step=0.01, interval_max=0.02):
                raise Flaky("the section says: try again")
        return len(runs)

    app.register("t.sectioned", sectioned, retry=None)  # only the section retries
    async with running(app):
        assert await app.send_task("t.sectioned") == 4


async def test_an_optional_section_logs_and_goes_on(
    app: App, running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    async def best_effort() -> str:
        with optional(ConnectionError):
            raise ConnectionError("the BI store is down")
        return "went on"

    app.register("t.best_effort", best_effort)
    async with running(app):
        assert await app.send_task("t.best_effort") == "went on"
    assert "the BI store is down" in caplog.text


async def test_sections_in_a_boxed_task_travel_back(
    app: App, running: Running, tmp_path: Path
) -> None:
    poisoned, flaky = tmp_path / "poisoned", tmp_path / "flaky"
    async with running(app):
        with pytest.raises(Flaky, match="bad input"):
            await app.send_task("failing.boxed_poisonous", (str(poisoned),))
        assert await app.send_task("failing.boxed_flaky", (str(flaky), 2)) == 3
    assert _runs(poisoned) == 1
    assert _runs(flaky) == 3


async def test_a_boxed_task_is_told_at_its_soft_limit(
    app: App, running: Running, tmp_path: Path
) -> None:
    async with running(app):
        with anyio.fail_after(10):
            assert (
                await app.send_task("failing.boxed_soft_limited", (str(tmp_path / "r"),))
                == "cleaned up"
            )


async def test_a_coroutine_past_its_soft_limit_is_cancelled_cleanly(
    app: App, running: Running
) -> None:
    cleaned: list[bool] = []

    async def slow() -> None:
        try:
            await anyio.sleep(10)
        finally:
            cleaned.append(True)

    app.register("t.slow", slow, soft_time_limit=0.2, retry=None)
    async with running(app):
        with anyio.fail_after(5), pytest.raises(TimeLimitExceeded, match="soft time limit"):
            await app.send_task("t.slow")
    assert cleaned == [True]


async def test_a_thread_past_its_hard_limit_is_abandoned_and_reported(
    app: App, running: Running
) -> None:
    def stuck_thread() -> None:
        time.sleep(3)

    app.register("t.stuck", stuck_thread, time_limit=0.3, retry=None)
    async with running(app):
        started = time.monotonic()
        with pytest.raises(TimeLimitExceeded, match="abandoned"):
            await app.send_task("t.stuck")
        assert time.monotonic() - started < 2.5  # reported without waiting for the thread
        assert await app.send_task("failing.ok") == "ok"


# -- deduplication -------------------------------------------------------------------------


async def test_duplicates_by_key_run_once(app: App, running: Running) -> None:
    sent: list[int] = []

    async def welcome(user_id: int) -> str:
        sent.append(user_id)
        return f"welcome {user_id}"

    app.register("t.welcome", welcome, dedupe=lambda user_id: f"welcome:{user_id}")
    async with running(app):
        first = app.send_task("t.welcome", (7,))
        assert await first == "welcome 7"
        with pytest.raises(TaskRevoked, match=f"duplicate of {first.id}"):
            await app.send_task("t.welcome", (7,))
        assert await app.send_task("t.welcome", (8,)) == "welcome 8"
    assert sent == [7, 8]


async def test_a_dedupe_key_survives_a_worker_restart(app: App, running: Running) -> None:
    runs: list[str] = []

    async def charge(order: str) -> str:
        runs.append(order)
        return order

    app.register("t.charge", charge, dedupe=lambda order: order)
    async with running(app):
        first = app.send_task("t.charge", ("A-1",))
        assert await first == "A-1"
    # The same message again (its ack was lost, say), to a new worker that never saw it.
    async with running(app):
        again = app.send_task("t.charge", ("A-1",), task_id=first.id)
        assert await app.send_task("t.charge", ("A-2",)) == "A-2"
        assert await again == "A-1"  # the stored result; the task did not run again
    assert runs == ["A-1", "A-2"]


async def test_a_failed_run_releases_its_dedupe_key(app: App, running: Running) -> None:
    runs: list[int] = []

    async def fragile(n: int) -> int:
        runs.append(n)
        if len(runs) == 1:
            raise Flaky("first time")
        return n

    app.register("t.fragile", fragile, dedupe=lambda n: str(n), retry=None)
    async with running(app):
        with pytest.raises(Flaky):
            await app.send_task("t.fragile", (1,))
        assert await app.send_task("t.fragile", (1,)) == 1
    assert runs == [1, 1]


async def test_receiver_store_keeps_finished_runs_across_worker_restarts(
    sqlite_url: str, running: Running
) -> None:
    app = App("receiver", broker=sqlite_url, receiver_store=True, retry=FAST)
    runs: list[int] = []

    async def once(n: int) -> int:
        runs.append(n)
        return n

    app.register("t.once", once)
    async with running(app):
        first = app.send_task("t.once", (1,))
        assert await first == 1
    async with running(app):  # a new worker: its in-memory receiver never saw it
        again = app.send_task("t.once", (1,), task_id=first.id)
        assert await app.send_task("t.once", (2,)) == 2
        assert await again == 1
    assert runs == [1, 2]
