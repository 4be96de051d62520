"""The executor's job queue: priority order, one wake-up per job, nothing lost to cancellation."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from celeriac.worker.jobqueue import JobQueue

pytestmark = pytest.mark.anyio


async def _settle() -> None:
    for _ in range(10):
        await anyio.lowlevel.checkpoint()


async def test_higher_priority_first_then_fifo() -> None:
    queue: JobQueue[str] = JobQueue()
    for item, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5)]:
        queue.put(item, priority)
    assert [await queue.get() for _ in range(4)] == ["b", "d", "a", "c"]


async def test_one_put_wakes_one_waiting_get() -> None:
    queue: JobQueue[int] = JobQueue()
    got: list[int | None] = []

    async def getter() -> None:
        got.append(await queue.get())

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(getter)
        await _settle()
        queue.put(1, 0)
        await _settle()
        assert got == [1]
        assert len(queue._waiters) == 19  # the others never woke up
        queue.close()
    assert got == [1] + [None] * 19


async def test_a_cancelled_get_takes_nothing_and_leaves_no_waiter_behind() -> None:
    queue: JobQueue[str] = JobQueue()
    second: list[str | None] = []

    async def first_getter(scope: anyio.CancelScope) -> None:
        with scope:
            await queue.get()
            pytest.fail("the cancelled get returned an item")

    async def second_getter() -> None:
        second.append(await queue.get())

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(first_getter, scope)
        await _settle()
        tg.start_soon(second_getter)
        await _settle()
        scope.cancel()  # the first in line gives up before any job comes
        await _settle()
        queue.put("job", 0)  # so the one wake-up goes to the second
        await _settle()
    assert second == ["job"]
    assert len(queue) == 0
    assert not queue._waiters


async def test_close_returns_none_only_once_empty() -> None:
    queue: JobQueue[str] = JobQueue()
    queue.put("left", 0)
    queue.close()
    assert await queue.get() == "left"
    assert await queue.get() is None
