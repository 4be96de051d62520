"""A step's message does not grow with its group: 10 members or 10,000, under 4 KiB.

A chord of ``n`` members is started with no worker running; every message it
published (its ``n`` members) is read off the broker and measured, then put back.
A worker runs the header; the body, routed to a queue that worker does not
consume, is read off its queue, measured, and put back; a worker on that queue
runs it, to show the small message still gives the whole result. Joins publish
nothing, so these are all the messages the chord publishes. Sizes are the
codec's (the bytes a broker stores), so one broker, SQLite, shows them.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from tests.brokers._shared import connected, running_worker
from tests.router.canvas_app import make_app

from celeriac import chord
from celeriac.abc import Broker, Delivery
from celeriac.brokers import Hub, open_broker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

LIMIT = 4096  #: bytes: no message of a canvas may be larger, whatever its size


@pytest.fixture
def anyio_backend() -> str:
    """One loop is enough: the sizes are the codec's."""
    return "asyncio"


async def fetch_all(broker: Broker, queue: str) -> list[int]:
    """The sizes of every message on ``queue``, each put back after it was read."""
    fetched: list[Delivery] = []
    while deliveries := await broker.fetch([queue], 1000, 0.2):
        fetched += deliveries
    await broker.nack(fetched)
    return [len(d.body) for d in fetched]


async def chord_message_sizes(directory: Path, members: int) -> tuple[int, int]:
    """The largest member message and the body message of a chord of ``members``;
    checks the chord's result too."""
    url = f"sqlite:///{directory / 'sizes.db'}"
    app = make_app(url)
    member, add = app.tasks["k.member"], app.tasks["t.add"]
    async with app:
        result = await app.start_async(chord(member.map(range(members)), add.s().set(queue="held")))
    async with connected(open_broker(url, Hub())) as (broker,):
        sizes = await fetch_all(broker, "default")
        assert len(sizes) == members
        async with running_worker(app, queues=["default"]):
            with anyio.fail_after(60):
                while "held" not in await broker.stats():
                    await anyio.sleep(0.05)
        body = await fetch_all(broker, "held")
        assert len(body) == 1
        async with running_worker(app, queues=["held"]):
            with anyio.fail_after(60):
                assert await result.get_async() == sum(range(members))
    return max(sizes), body[0]


async def test_no_message_of_a_chord_grows_with_its_header(tmp_path: Path) -> None:
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    small = await chord_message_sizes(tmp_path / "small", 10)
    large = await chord_message_sizes(tmp_path / "large", 10_000)
    assert max(small) < LIMIT, f"largest message: {max(small)} bytes"
    assert max(large) < LIMIT, f"largest message: {max(large)} bytes"
    # Ids of up to 4 more digits: a few bytes more, never a part per member.
    assert large[0] <= small[0] + 16, f"members: {small[0]} -> {large[0]} bytes"
    assert large[1] <= small[1] + 16, f"body: {small[1]} -> {large[1]} bytes"
