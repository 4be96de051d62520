"""Resource saturation through a real worker: a full budget leaves its work in the broker.

One worker with a concurrency of 1 runs slow thread tasks from queue ``cpu`` and
quick coroutine tasks from queue ``io``. With the default strategy it holds no
more ``cpu`` messages than it can run plus one round, so the rest stay in the
broker for other workers, while ``io`` tasks keep flowing. With
:class:`QueueOrder` (no saturation) the same worker prefetches all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import anyio
import pytest

from celeriac import App, Worker
from celeriac.abc import QueueStats
from celeriac.brokers import Hub, open_broker
from celeriac.scheduler.priorities import FetchStrategy, QueueOrder, ResourceSaturation

pytestmark = pytest.mark.anyio

Running = Callable[..., AbstractAsyncContextManager[Worker]]


def build(url: str) -> App:
    app = App("saturation", broker=url, retry=None)

    def slow(n: int) -> int:
        time.sleep(0.2)
        return n

    async def quick(n: int) -> int:
        return n

    app.register("s.slow", slow, queue="cpu")  # a plain function: a thread task
    app.register("s.quick", quick, queue="io")
    return app


@pytest.mark.parametrize(
    ("strategy", "left_behind"), [(ResourceSaturation(), True), (QueueOrder(), False)]
)
async def test_a_full_budget_leaves_its_queue_in_the_broker(
    sqlite_url: str, running: Running, strategy: FetchStrategy, left_behind: bool
) -> None:
    app = build(sqlite_url)
    broker = open_broker(sqlite_url, Hub())
    await broker.connect()

    async def cpu() -> QueueStats:
        return (await broker.stats()).get("cpu", QueueStats(0, 0, 0))

    try:
        async with running(app, queues=["cpu", "io"], concurrency=1, strategy=strategy):
            slow = [app.send_task("s.slow", (n,)) for n in range(12)]
            with anyio.fail_after(10):
                while not (await cpu()).in_flight:
                    await anyio.sleep(0.02)
                await anyio.sleep(0.3)  # a fetch or two later
                waiting = (await cpu()).ready
                quick = [app.send_task("s.quick", (n,)) for n in range(50)]
                assert [await r for r in quick] == list(range(50))
                still = (await cpu()).ready
            with anyio.fail_after(30):
                assert [await r for r in slow] == list(range(12))
    finally:
        await broker.close()
    if left_behind:
        # One running, one buffered: the other ten wait in the broker, and I/O work
        # went past them.
        assert (waiting >= 8, still >= 6) == (True, True), (waiting, still)
    else:
        assert (waiting, still) == (0, 0)
