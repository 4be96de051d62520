"""The result publisher's router part: a store failure is retried, a bad workflow is not.

A canvas step's message is acknowledged only after its workflow was advanced. If the
router cannot reach its store, the batch is retried (nothing acked); if a workflow is
malformed (the router raises anything else), the error is logged and the messages
are acknowledged anyway, so one bad workflow never stalls a worker's results.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from celeriac.abc import Delivery, Outgoing
from celeriac.brokers import Hub, open_broker
from celeriac.canvas.outcomes import Done
from celeriac.errors import BrokerError
from celeriac.router.router import StepDone
from celeriac.sinks import open_sink
from celeriac.worker.settle import ResultPublisher

pytestmark = pytest.mark.anyio


class Router:
    """Fails ``failures`` times with ``error``, then records what it advanced."""

    def __init__(self, error: Exception, failures: int) -> None:
        self.error, self.failures = error, failures
        self.advanced: list[StepDone] = []
        self.calls = 0

    async def advance(self, steps: list[StepDone], *, stored: bool = False) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise self.error
        self.advanced += steps


async def run_one(router: Router) -> tuple[list[Delivery], int]:
    hub = Hub()
    broker, sink = open_broker("memory://settle", hub), open_sink("memory://settle", hub)
    await broker.connect()
    await sink.connect()
    await broker.publish([Outgoing(queue="q", id="m1", body=b"x")])
    [delivery] = await broker.fetch(["q"], 1, 1.0)
    settled: list[Delivery] = []
    publisher = ResultPublisher(
        broker,
        {"default": sink},
        result_ttl=None,
        on_settled=lambda done, dead: settled.extend(done),
        backoff=(0.01, 0.02),
        router=router,  # type: ignore[arg-type]
    )
    async with anyio.create_task_group() as tg:
        await tg.start(publisher.run)
        publisher.finished(delivery, None, (), step=StepDone("wf", 3, Done(1)))
        with anyio.fail_after(5):
            await publisher.flush()
        publisher.close()
    left = sum(s.ready + s.in_flight for s in (await broker.stats()).values())
    await broker.close()
    await sink.close()
    return settled, left


async def test_a_store_failure_is_retried_before_anything_is_acked() -> None:
    router = Router(BrokerError("store away"), failures=2)
    settled, left = await run_one(router)
    assert router.calls == 3
    assert [s.step for s in router.advanced] == [3]
    assert [d.id for d in settled] == ["m1"]
    assert left == 0


async def test_a_malformed_workflow_is_logged_and_the_message_acked(
    caplog: Any,
) -> None:
    router = Router(KeyError("no such step"), failures=1)
    settled, left = await run_one(router)
    assert router.calls == 1
    assert router.advanced == []
    assert [d.id for d in settled] == ["m1"]
    assert left == 0
    assert "could not advance the workflows of 1 message(s)" in caplog.text
