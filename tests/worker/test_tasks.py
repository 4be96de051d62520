"""Tasks of every kind through a real worker on SQLite, on asyncio and trio."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import pytest
from tests.apps.basic import PaymentDeclined
from tests.worker.helpers import lines

from celeriac import App, TaskError, TaskRevoked, TimeLimitExceeded, Worker
from celeriac.worker.budget import Budget

pytestmark = pytest.mark.anyio

Running = Callable[..., AbstractAsyncContextManager[Worker]]


async def test_each_kind_runs_where_it_should(app: App, running: Running) -> None:
    async with running(app):
        assert await app.send_task("basic.add", (1, 2)) == 3
        assert await app.send_task("basic.mul", (3, 4)) == 12
        assert await app.send_task("basic.boxed_mul", (5, 6)) == 30
        thread_pid = await app.send_task("basic.pid")
        boxed_pid = await app.send_task("basic.boxed_pid")
    assert thread_pid == os.getpid()
    assert boxed_pid != os.getpid()


async def test_user_error_is_rebuilt_as_its_own_type(app: App, running: Running) -> None:
    async with running(app):
        with pytest.raises(PaymentDeclined, match="declined 10"):
            await app.send_task("basic.decline", (10,))


async def test_error_that_cannot_be_rebuilt_is_a_task_error(app: App, running: Running) -> None:
    async with running(app):
        with pytest.raises(TaskError) as info:
            await app.send_task("basic.unbuildable")
    assert info.value.type_name == "tests.apps.basic.Unbuildable"
    assert "7: nope" in info.value.message
    assert "Traceback" in info.value.remote_traceback


async def test_unserializable_result_is_a_failure_not_a_crash(app: App, running: Running) -> None:
    async with running(app):
        with pytest.raises(TypeError, match="not serializable"):
            await app.send_task("basic.unserializable")
        assert await app.send_task("basic.add", (2, 2)) == 4


async def test_time_limit_cancels_a_coroutine_task(app: App, running: Running) -> None:
    async with running(app):
        with anyio.fail_after(3):
            with pytest.raises(TimeLimitExceeded, match=r"time limit of 0\.3s"):
                await app.send_task("basic.slow_limited")


async def test_boxed_task_past_its_limit_is_killed(app: App, running: Running) -> None:
    async with running(app):
        with anyio.fail_after(20):  # the first boxed task also starts its box process
            with pytest.raises(TimeLimitExceeded, match=r"time limit of 0\.5s"):
                await app.send_task("basic.boxed_slow")
        assert await app.send_task("basic.boxed_mul", (2, 3)) == 6


async def test_box_that_dies_fails_its_task_and_is_replaced(app: App, running: Running) -> None:
    async with running(app):
        with pytest.raises(TaskError, match="BoxDied"):
            await app.send_task("basic.boxed_crash")
        assert await app.send_task("basic.boxed_mul", (7, 6)) == 42


async def test_states_move_from_pending_to_success(app: App, running: Running) -> None:
    result = app.send_task("basic.sleep", (3,))  # long enough to be seen running
    async with app:
        await anyio.sleep(0.1)
        assert await result.get_state() == "PENDING"
    async with running(app):
        with anyio.fail_after(10):
            while await result.get_state() != "STARTED":
                await anyio.sleep(0.02)
        assert await result.get_async(timeout=10) == ""
        assert await result.get_state() == "SUCCESS"


async def test_countdown_delays_the_run(app: App, running: Running) -> None:
    async with running(app):
        started = anyio.current_time()
        await app.send_task("basic.add", (1, 1), countdown=0.6)
        assert anyio.current_time() - started >= 0.55


async def test_expired_message_is_not_run(app: App, running: Running, tmp_path: Path) -> None:
    log = tmp_path / "log"
    result = app.send_task("basic.record", (str(log), "late"), expires=0.05)
    async with app:
        await anyio.sleep(0.2)
    async with running(app):
        with pytest.raises(TaskRevoked):
            await result.get_async(timeout=5)
    assert lines(log) == []


async def test_revoked_before_start_never_runs(app: App, running: Running, tmp_path: Path) -> None:
    log = tmp_path / "log"
    async with running(app):
        sent = anyio.current_time()
        # The revocation is stored long before the eta, however slow the machine.
        result = app.send_task("basic.record", (str(log), "x"), countdown=1.5)
        await result.revoke_async()
        assert await result.get_state() == "REVOKED"
        # Past the eta: the message is due, and the worker must drop it, not run it.
        await anyio.sleep(max(0.0, sent + 1.5 + 0.3 - anyio.current_time()))
        with pytest.raises(TaskRevoked):
            await result.get_async(timeout=1)
        assert await app.send_task("basic.add", (1, 1)) == 2
    assert lines(log) == []


async def test_revoking_a_running_task_cancels_it(
    app: App, running: Running, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    async with running(app):
        result = app.send_task("basic.sleep", (10, str(log), "long"))
        with anyio.fail_after(5):
            while not lines(log):
                await anyio.sleep(0.02)
        result.revoke()  # inside a loop: does not block, sends in the background
        with anyio.fail_after(3):
            with pytest.raises(TaskRevoked):
                await result.get_async()
    assert lines(log) == [f"start long {os.getpid()}"]


async def test_higher_priority_runs_first(app: App, running: Running, tmp_path: Path) -> None:
    log = tmp_path / "log"
    priorities = [3, 9, 0, 5, 9, 1, 7, 2]
    results = [
        app.send_task("basic.prio_record", (str(log), f"{p}-{i}"), priority=p)
        for i, p in enumerate(priorities)
    ]
    async with app:
        pass  # flushes the publisher: every message is in the broker before the worker starts
    one_at_a_time = {"coroutine": Budget(1, 1)}
    async with running(app, queues=["prio"], prefetch=1, budgets=one_at_a_time):
        for result in results:
            await result.get_async(timeout=10)
    ran = [int(tag.split("-")[0]) for tag in lines(log)]
    assert ran == sorted(priorities, reverse=True)


async def test_same_message_twice_runs_once(app: App, running: Running, tmp_path: Path) -> None:
    log = tmp_path / "log"
    first = app.send_task("basic.record", (str(log), "once"), task_id="fixed-id")
    app.send_task("basic.record", (str(log), "once"), task_id="fixed-id")
    async with running(app) as worker:
        assert await first.get_async(timeout=5) == "once"
        with anyio.fail_after(5):
            while worker.stats()["duplicates"] < 1:
                await anyio.sleep(0.02)
    assert lines(log) == ["once"]


async def test_unknown_task_goes_to_dead_letters(app: App, running: Running) -> None:
    async with running(app):
        app.send_task("basic.no_such_task")
        assert await app.send_task("basic.add", (1, 1)) == 2
        runtime = app._bridge.here()
        assert runtime is not None
        with anyio.fail_after(5):
            while not (dead := await runtime.broker.dead_letters()):
                await anyio.sleep(0.02)
    assert "UnknownTask" in dead[0].reason


def test_sync_callers_use_the_same_api(sqlite_url: str) -> None:
    from tests.apps.basic import make_app

    app = make_app(sqlite_url)
    with app.testing():
        assert app.send_task("basic.add", (2, 3)).get(timeout=5) == 5
        assert app.send_task("basic.boxed_mul", (2, 3)).get(timeout=10) == 6
        result = app.send_task("basic.mul", (4, 5))
        assert result.get(timeout=5) == 20
        assert result.state == "SUCCESS"
    assert app.broker_url == sqlite_url  # testing() restored the real broker


async def test_testing_mode_from_async_code(sqlite_url: str) -> None:
    from tests.apps.basic import make_app

    app = make_app(sqlite_url)
    with app.testing():
        assert await app.send_task("basic.add", (20, 22)) == 42
        assert await app.send_task("basic.mul", (6, 7)).get_async(timeout=5) == 42
        result = app.send_task("basic.add", (1, 1))
        assert await result == 2
        assert await result.get_state() == "SUCCESS"


async def test_one_app_on_two_brokers_routes_and_consumes_each(tmp_path: Path) -> None:
    from tests.apps.basic import make_app

    main, other = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    app = make_app([main, other], routes={"basic.mul": f"{other}#numbers"})
    worker = app.worker(grace=1, heartbeat=0.2)
    assert worker.queue_map() == {main: ["default", "prio"], other: ["numbers"]}
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        async with app:
            assert await app.send_task("basic.mul", (6, 7)) == 42  # through b.db
            assert await app.send_task("basic.add", (1, 2)) == 3  # through a.db
            runtime = app._bridge.here()
            assert runtime is not None
            stats = await runtime.brokers[other].stats()
            assert "numbers" in stats
            assert "numbers" not in await runtime.brokers[main].stats()
        worker.request_stop()
        await worker.wait_stopped()


def test_a_broker_without_a_results_store_asks_for_a_sink() -> None:
    from tests.apps.basic import make_app

    from celeriac import ConfigurationError

    with pytest.raises(ConfigurationError, match="need a sink of their own"):
        make_app("amqp://guest:guest@127.0.0.1:5672/")
    app = make_app("amqp://guest:guest@127.0.0.1:5672/", sinks={"default": "memory://"})
    assert app.sink_urls["default"] == "memory://"
