"""Resource saturation through a real worker: a full budget leaves its work in the broker.

One worker with a concurrency of 1 runs slow thread tasks from queue ``cpu`` and
quick coroutine tasks from queue ``io``. With the default strategy it holds no
more ``cpu`` messages than it can run plus one round, so the rest stay in the
broker for other workers, while ``io`` tasks keep flowing. With
:class:`QueueOrder` (no saturation) the same worker prefetches all of them.
"""

from __future__ import annotations

import threading
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


def build(url: str, started: threading.Event, release: threading.Event) -> App:
    """Slow tasks set ``started`` and then block until the test sets ``release``."""
    app = App("saturation", broker=url, retry=None)

    def slow(n: int) -> int:
        started.set()
        release.wait(30)  # held until the test has counted the queue (30 s: a safety net)
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
    started, release = threading.Event(), threading.Event()
    app = build(sqlite_url, started, release)
    broker = open_broker(sqlite_url, Hub())
    await broker.connect()
    # No slow task ends before ``release``: the worker's hold on queue ``cpu`` can only
    # grow while the test counts, whatever the machine's speed. With saturation it
    # takes one to run and one to buffer; without, all twelve.
    taken = 2 if left_behind else 12

    async def cpu() -> QueueStats:
        return (await broker.stats()).get("cpu", QueueStats(0, 0, 0))

    try:
        async with running(app, queues=["cpu", "io"], concurrency=1, strategy=strategy):
            slow = [app.send_task("s.slow", (n,)) for n in range(12)]
            try:
                with anyio.fail_after(10):
                    # All twelve in the broker, the first running, the worker's share taken.
                    while (
                        (stats := await cpu()).in_flight < taken
                        or stats.ready + stats.in_flight < 12
                        or not started.is_set()
                    ):
                        await anyio.sleep(0.02)
                    waiting = (await cpu()).ready
                    # The worker fetches again and again for the I/O work, which goes past
                    # the waiting cpu messages; it still takes no more of them.
                    quick = [app.send_task("s.quick", (n,)) for n in range(50)]
                    assert [await r for r in quick] == list(range(50))
                    still = (await cpu()).ready
            finally:
                release.set()
            with anyio.fail_after(30):
                assert [await r for r in slow] == list(range(12))
    finally:
        await broker.close()
    if left_behind:
        # One running, one buffered: the other ten wait in the broker, and I/O work
        # went past them.
        assert (waiting, still) == (10, 10)
    else:
        assert (waiting, still) == (0, 0)
