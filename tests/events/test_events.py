"""Events through real worker processes: validated, routed once to every subscriber.

The producer declares the event class and has no subscribers; the worker processes
know the event only by name. One ``delay()`` is one event message; the router (in
whichever worker receives it) publishes one command per subscriber, and each runs
once, even when the event message arrives twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from tests.brokers._shared import redis_namespace
from tests.worker.helpers import lines, spawn_worker, stop, wait_for_workers

from celeriac import App
from celeriac.abc import Outgoing
from celeriac.brokers import Hub, open_broker
from celeriac.tasks.event import EventType

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the workers are separate processes


@pytest.fixture(params=["sqlite", "redis"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'q.db'}"
    else:
        with redis_namespace() as url:
            yield url


def producer(url: str) -> tuple[App, EventType]:
    app = App("events", broker=url)

    @app.event(name="tests.events.Signup")
    class Signup:
        """Someone signed up."""

        user_id: int
        email: str
        path: str

    return app, Signup


async def test_each_subscriber_runs_once_per_event(broker: str, tmp_path: Path) -> None:
    record, log = tmp_path / "record", tmp_path / "workers.log"
    app, signup = producer(broker)
    workers = [
        spawn_worker(broker, app="tests.events.subscriber_app:app", log=log) for _ in range(2)
    ]
    try:
        async with app:
            await wait_for_workers(app, 2)
            for n in range(20):
                await signup.delay(user_id=n, email=f"u{n}@x", path=str(record)).confirmed_async()
            with anyio.fail_after(30):
                while len(lines(record)) < 40:
                    await anyio.sleep(0.05)
            await anyio.sleep(0.5)  # anything extra would show up now
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0], log.read_text()[-3000:]
    runs = Counter(line.split()[0] + line.split()[1] for line in lines(record))
    assert runs == Counter({f"{kind}{n}": 1 for kind in ("welcome", "count") for n in range(20)})


async def test_an_event_delivered_twice_runs_each_subscriber_once(
    broker: str, tmp_path: Path
) -> None:
    """The second copy goes to a fresh worker (no memory of the first), as after a
    crash between routing the event and acknowledging it."""
    record, log = tmp_path / "record", tmp_path / "workers.log"
    app, signup = producer(broker)
    message = signup.message(user_id=7, email="seven@x", path=str(record))
    body = app.codec.encode(message)
    raw = open_broker(broker, Hub())
    await raw.connect()
    try:
        for copy in range(2):
            worker = spawn_worker(broker, app="tests.events.subscriber_app:app", log=log)
            try:
                async with app:
                    await wait_for_workers(app, 1)
                await raw.publish([Outgoing(queue="default", id=message.id, body=body)])
                # One snapshot: the event's commands are published before the event is
                # acked, so an empty queue means they have run too.
                with anyio.fail_after(20):
                    while True:
                        queue = (await raw.stats())["default"]
                        if queue.ready + queue.in_flight == 0 and len(lines(record)) >= 2:
                            break
                        await anyio.sleep(0.05)
                await anyio.sleep(0.5)
            finally:
                assert stop(worker) == 0, log.read_text()[-3000:]
            assert len(lines(record)) == 2, (copy, lines(record))
    finally:
        await raw.close()
    assert sorted(lines(record)) == ["count 7", "welcome 7 seven@x"]


async def test_fields_are_checked_before_anything_is_published(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    _, signup = producer(url)
    with pytest.raises(TypeError, match=r"tests.events.Signup: Expected `int`"):
        signup.delay(user_id="one", email="x", path="p")
    with pytest.raises(TypeError, match="missing required field `path`"):
        signup.delay(user_id=1, email="x")
    with pytest.raises(TypeError, match="unknown field `extra`"):
        signup.delay(user_id=1, email="x", path="p", extra=2)
    raw = open_broker(url, Hub())
    await raw.connect()
    try:
        assert sum(s.ready for s in (await raw.stats()).values()) == 0
    finally:
        await raw.close()
