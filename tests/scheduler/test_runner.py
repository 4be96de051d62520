"""The periodic scheduler's loop on a virtual clock: the memory coordinator and broker.

Several schedulers run in one event loop on one :class:`VirtualClock` (the store's
clock and every scheduler's ``sleep``), publishing through a real App on the
memory broker; each test then reads what reached the broker's queue. No test
sleeps: time moves only by ``clock.advance``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import anyio
import pytest

from celeriac import App
from celeriac.abc import Coordinator
from celeriac.brokers import open_broker
from celeriac.coordination.memory import MemoryCoordinator
from celeriac.errors import BrokerError
from celeriac.scheduler.periodic import VirtualClock, from_timestamp, tick_id
from celeriac.scheduler.runner import PeriodicScheduler

pytestmark = pytest.mark.anyio

START = 1_700_000_000.25  # a quarter second after a whole second
T0 = from_timestamp(1_700_000_000)
LEASE = 5.0

Start = Callable[..., Awaitable["Running"]]


class Recording:
    """A coordinator that passes every call on to the memory one, notes each claim
    with the store's time, and fails every call while ``down``."""

    def __init__(self, inner: MemoryCoordinator, clock: VirtualClock) -> None:
        self.inner, self.clock, self.url = inner, clock, inner.url
        self.claims: list[tuple[str, float]] = []
        self.down = False

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.inner, name)

        async def call(*args: Any) -> Any:
            if self.down:
                raise BrokerError("the store is down")
            if name == "claim":
                self.claims.append((args[0], self.clock.now()))
            return await method(*args)

        return call


class Running:
    """One scheduler running in the test's task group."""

    def __init__(self, scheduler: PeriodicScheduler) -> None:
        self.scheduler = scheduler
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            with self.scope:
                await self.scheduler.run(task_status=task_status)
        finally:
            self.done.set()

    def crash(self) -> None:
        """Die at once: no clean-up of claims, nothing more published."""
        self.scope.cancel()


def make_app(**periodic: Any) -> App:
    app = App("clock", broker="memory://clock")

    @app.periodic(every=1, name="clock.tick", **periodic)
    def tick() -> None: ...

    return app


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(START)


@pytest.fixture
def app() -> App:
    return make_app()


@asynccontextmanager
async def schedulers(
    app: App, clock: VirtualClock, store: Coordinator | Recording | None = None
) -> AsyncIterator[Start]:
    """The app started; ``await start(name, ...)`` runs a scheduler; all stop at the end."""
    coordinator = store or MemoryCoordinator("memory://store", app.hub, clock=clock.now)
    started: list[Running] = []
    async with app, anyio.create_task_group() as tg:

        async def start(
            name: str, cls: type[PeriodicScheduler] = PeriodicScheduler, **options: Any
        ) -> Running:
            options.setdefault("sleep", clock.sleep)
            running = Running(cls(app, coordinator, name=name, lease=LEASE, **options))  # type: ignore[arg-type]
            await tg.start(running.run)
            started.append(running)
            return running

        yield start
        await stop(clock, *started)


async def stop(clock: VirtualClock, *running: Running) -> None:
    """Stop gracefully, moving virtual time on while they finish what they publish."""
    for each in running:
        each.scheduler.request_stop()
    for _ in range(1000):
        if all(each.done.is_set() for each in running):
            return
        await clock.advance(0.1)
    raise AssertionError("the schedulers did not stop")


async def published(app: App) -> list[tuple[datetime, str, str]]:
    """Every message in the queue: (tick, scheduler, message id), in tick order."""
    broker = open_broker(app.broker_url, app.hub)
    await broker.connect()
    try:
        found = []
        while deliveries := await broker.fetch(["default"], 1000, 0.05):
            for delivery in deliveries:
                envelope = app.codec.decode(delivery.body)
                tick = datetime.fromisoformat(envelope.headers["celeriac-tick"])
                assert envelope.name == "clock.tick"
                assert envelope.id == delivery.id == tick_id("clock", "clock.tick", tick)
                found.append((tick, envelope.headers["celeriac-scheduler"], envelope.id))
            await broker.ack(deliveries)
        return sorted(found)
    finally:
        await broker.close()


def seconds(first: int, last: int) -> list[datetime]:
    """The per-second ticks T0+first .. T0+last."""
    return [T0 + timedelta(seconds=n) for n in range(first, last + 1)]


async def test_two_schedulers_publish_each_tick_once_with_none_skipped(
    app: App, clock: VirtualClock
) -> None:
    async with schedulers(app, clock) as start:
        await start("a")
        await start("b")
        for _ in range(30):
            await clock.advance(1.0)
    ticks = await published(app)
    assert [tick for tick, _, _ in ticks] == seconds(1, 30)
    assert len({id for _, _, id in ticks}) == 30


class DiesBeforePublishing(PeriodicScheduler):
    """Wins its claims, then hangs where it would publish (until it is killed)."""

    async def _publish(self, *args: Any) -> None:
        await anyio.sleep_forever()


async def test_a_tick_whose_winner_dies_before_publishing_is_published_by_a_peer(
    app: App, clock: VirtualClock
) -> None:
    async with schedulers(app, clock) as start:
        doomed = await start("doomed", DiesBeforePublishing)  # first in line: wins every claim
        await start("peer")
        for _ in range(5):
            await clock.advance(1.0)
        doomed.crash()
        for _ in range(25):
            await clock.advance(1.0)
    ticks = await published(app)
    assert [tick for tick, _, _ in ticks] == seconds(1, 30)  # once each, the first five late
    assert {who for _, who, _ in ticks} == {"peer"}


async def test_schedulers_decide_by_the_store_clock_not_by_when_they_wake(
    app: App, clock: VirtualClock
) -> None:
    store = Recording(MemoryCoordinator("memory://store", app.hub, clock=clock.now), clock)

    async def early(seconds: float) -> None:  # a local clock that runs fast: wakes too soon
        await clock.sleep(seconds / 3)

    async with schedulers(app, clock, store) as start:
        await start("fast", sleep=early)
        await start("slow")
        for _ in range(20):
            await clock.advance(1.0)
    claims = [
        (datetime.fromisoformat(key.split(":", 2)[2]), at)
        for key, at in store.claims
        if key.startswith("tick:")
    ]
    assert len(claims) >= 20
    assert all(from_timestamp(at) >= tick for tick, at in claims), "no tick before its time"
    assert [tick for tick, _, _ in await published(app)] == seconds(1, 20)


async def test_a_short_store_outage_delays_ticks_but_loses_none(
    app: App, clock: VirtualClock
) -> None:
    store = Recording(MemoryCoordinator("memory://store", app.hub, clock=clock.now), clock)
    async with schedulers(app, clock, store) as start:
        await start("a")
        await start("b")
        for n in range(30):
            store.down = 10 <= n < 15  # five seconds with every call failing (grace is 10)
            await clock.advance(1.0)
        store.down = False
    assert [tick for tick, _, _ in await published(app)] == seconds(1, 30)


@pytest.mark.parametrize("policy", ["skip", "catch_up_once"])
async def test_ticks_missed_while_no_scheduler_ran_follow_the_policy(
    clock: VirtualClock, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(missed=policy)
    async with schedulers(app, clock) as start:
        first = await start("first", grace=3.0)
        for _ in range(5):
            await clock.advance(1.0)
        await stop(clock, first)
        await clock.advance(START + 605 - clock.now())  # no scheduler runs for ten minutes
        with caplog.at_level(logging.WARNING, "celeriac.scheduler"):
            second = await start("second", grace=3.0)
            for _ in range(5):
                await clock.advance(1.0)
    ticks = [tick for tick, _, _ in await published(app)]
    # Restarted at T0+605.25 with a grace of 3 s: ticks up to T0+602 were missed;
    # T0+603..605 are late but in grace; then on time from T0+606.
    expected = (
        seconds(1, 5) + (seconds(602, 602) if policy == "catch_up_once" else []) + seconds(603, 610)
    )
    assert ticks == expected
    assert second.scheduler.missed == 1
    assert "were missed" in caplog.text
