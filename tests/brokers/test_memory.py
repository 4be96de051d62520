"""memory:// across threads and event loops, as the App's test mode uses it."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.to_thread
import pytest

from celeriac.abc import Delivery, Outgoing, StoredDocument
from celeriac.brokers import Hub, open_broker
from celeriac.brokers.memory import MemoryBroker
from celeriac.sinks import open_sink

pytestmark = pytest.mark.anyio

T = TypeVar("T")


def _in_thread(fn: Callable[[], Awaitable[T]], backend: str) -> tuple[threading.Thread, list[T]]:
    """Run ``fn`` in its own event loop (``backend``) in a new thread."""
    result: list[T] = []

    def run() -> None:
        result.append(anyio.run(fn, backend=backend))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


@pytest.mark.parametrize("other_loop", ["asyncio", "trio"])
async def test_a_fetch_in_another_threads_loop_wakes_on_publish(other_loop: str) -> None:
    hub = Hub()
    consumer, producer = open_broker("memory://", hub), open_broker("memory://", hub)

    async def consume() -> tuple[list[Delivery], float]:
        got = await consumer.fetch(["q"], 10, 10.0)
        return got, time.monotonic()

    thread, result = _in_thread(consume, other_loop)
    await anyio.sleep(0.1)
    sent = time.monotonic()
    await producer.publish([Outgoing("q", "m1", b"x")])
    await anyio.to_thread.run_sync(thread.join, 5.0)
    [(got, woke)] = result
    assert [d.id for d in got] == ["m1"]
    assert woke - sent < 0.1


@pytest.mark.parametrize("other_loop", ["asyncio", "trio"])
async def test_a_sink_wait_in_another_threads_loop_wakes_on_store(other_loop: str) -> None:
    hub = Hub()
    waiter, writer = open_sink("memory://", hub), open_sink("memory://", hub)

    async def wait() -> dict[str, StoredDocument]:
        return await waiter.wait(["r1"], 10.0, frozenset({"SUCCESS"}))

    thread, result = _in_thread(wait, other_loop)
    await anyio.sleep(0.1)
    await writer.store([StoredDocument("r2", "SUCCESS", b"")], ttl=None)  # not waited for
    await writer.store([StoredDocument("r1", "SUCCESS", b"1")], ttl=None)
    await anyio.to_thread.run_sync(thread.join, 5.0)
    assert result == [{"r1": StoredDocument("r1", "SUCCESS", b"1")}]


async def test_named_stores_and_hubs_are_isolated() -> None:
    hub = Hub()
    await open_broker("memory://a", hub).publish([Outgoing("q", "m", b"")])
    assert await open_broker("memory://b", hub).fetch(["q"], 1, 0) == []
    assert await open_broker("memory://a", Hub()).fetch(["q"], 1, 0) == []
    assert len(await open_broker("memory://a", hub).fetch(["q"], 1, 0)) == 1


async def test_bookkeeping_stays_bounded_under_load() -> None:
    broker = MemoryBroker("memory://")
    for _ in range(50):
        await broker.publish([Outgoing("q", str(n), b"") for n in range(200)])
        got = await broker.fetch(["q"], 200, 0)
        await broker.extend(got, 10)
        await broker.ack(got)
    store = broker._store
    assert len(store._leases) <= 64 + 200 * 3
    assert not store._in_flight


async def test_a_closed_broker_refuses_work() -> None:
    from celeriac.errors import BrokerError

    broker = MemoryBroker()
    await broker.close()
    with pytest.raises(BrokerError, match="closed"):
        await broker.publish([Outgoing("q", "m", b"")])
