"""Backend-specific claims that more than one backend makes, written once.

Each is a coroutine a backend's test module awaits in a test of its own, which
says why that backend should meet it.
"""

from __future__ import annotations

import statistics
import time

import anyio
from tests.brokers._shared import connected

from celeriac.abc import Broker, Outgoing, StoredDocument
from celeriac.brokers import Hub, open_broker
from celeriac.sinks import open_sink

__all__ = [
    "check_a_delayed_message_comes_soon_after_its_eta",
    "check_a_waiting_fetch_and_wait_wake_within_milliseconds",
]


async def check_a_waiting_fetch_and_wait_wake_within_milliseconds(url: str) -> None:
    """A blocked fetch wakes on a publish, and a blocked wait on a store, at once.

    ``url`` names both a broker and a sink (the same store).
    """
    fetched: list[float] = []
    woken: list[float] = []
    # A hub each, as separate processes would have: every wake-up comes through the server.
    brokers = connected(open_broker(url, Hub()), open_broker(url, Hub()))
    sinks = connected(open_sink(url, Hub()), open_sink(url, Hub()))
    async with brokers as (consumer, producer), sinks as (waiter, writer):

        async def consume() -> None:
            while len(fetched) < 15:
                [d] = await consumer.fetch(["q"], 1, 5.0)
                fetched.append(time.time() - float(d.body))
                await consumer.ack([d])

        async def wait() -> None:
            for n in range(15):
                found = await waiter.wait([f"doc-{n}"], 5.0, frozenset({"SUCCESS"}))
                woken.append(time.time() - float(found[f"doc-{n}"].body))

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            tg.start_soon(wait)
            for n in range(15):
                await anyio.sleep(0.01)
                now = str(time.time()).encode()
                await producer.publish([Outgoing("q", str(n), now)])
                await writer.store([StoredDocument(f"doc-{n}", "SUCCESS", now)], ttl=60)
    # Pushed wake-ups take a few ms; the fallbacks (a poll, a blocking read's timeout)
    # take 125 ms and more. The bound leaves room for a loaded machine.
    assert statistics.median(fetched) < 0.05
    assert statistics.median(woken) < 0.05


async def check_a_delayed_message_comes_soon_after_its_eta(broker: Broker) -> None:
    """A message published with an eta 150 ms ahead is fetched within a few ms of it."""
    late: list[float] = []
    for n in range(3):
        eta = time.time() + 0.15
        await broker.publish([Outgoing("q", str(n), b"", eta=eta)])
        [d] = await broker.fetch(["q"], 1, 2.0)
        late.append(time.time() - eta)
        await broker.ack([d])
    assert min(late) >= 0
    assert statistics.median(late) < 0.05
