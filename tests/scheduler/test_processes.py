"""The issue's proof: two ``celeriac scheduler`` processes publish each tick once.

Two scheduler processes (one on asyncio, one on trio) run a per-second schedule,
the broker's store doubling as the coordinator: on Redis and on PostgreSQL, both
runs at the same time. About 20 s after both of a run's processes are ready, the
one that published last is SIGKILLed; the other runs on until 60 s after ready
(the issue's minute), then gets SIGTERM. Running the two stores side by side
keeps the test's wall time near one run's.

The test then reads every message off each queue and checks that each second
from the first tick to the last was published, under its one deterministic
message id, exactly once. The one exception allowed: a scheduler killed in the
few milliseconds between the broker accepting a tick and the store recording
it makes its peer publish that tick again under the same id (workers run it
once); at most one tick may have two copies, never two ids. A failure says
which store it happened on, and does not stop the other store's run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from datetime import datetime

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from tests.brokers._shared import POSTGRES_URL, postgres_schema, redis_namespace, side_by_side

from celeriac.brokers import Hub, open_broker
from celeriac.coordination import open_coordinator
from celeriac.messages import Codec
from celeriac.scheduler.periodic import from_timestamp, tick_id
from celeriac.testing.conformance import with_options

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    # Up to a minute to start on a busy machine, the minute, and the SIGTERM.
    pytest.mark.timeout(180),
]

APP = "tests.scheduler.ticks_app:app"
LEASE = 5.0  # PeriodicScheduler's default
KILL_AT = 20.0  # seconds after both schedulers are ready
RUN = 60.0  # the issue's: from both ready to the survivor's SIGTERM
STORES = ("redis", "postgresql")


@pytest.fixture
def anyio_backend() -> str:
    """The test only drives processes, which run on both loops themselves."""
    return "asyncio"


@contextmanager
def store_url(store: str) -> Iterator[str]:
    """A broker URL of its own on ``store``: a Redis key prefix, or a PostgreSQL schema."""
    if store == "redis":
        with redis_namespace() as url:
            yield url
    else:
        with postgres_schema() as schema:
            yield with_options(POSTGRES_URL, schema=schema)


@pytest.fixture
def store_urls() -> Iterator[dict[str, str]]:
    """A broker URL of its own on each store, for runs side by side."""
    with ExitStack() as stack:
        yield {store: stack.enter_context(store_url(store)) for store in STORES}


class Scheduler:
    """A ``celeriac scheduler`` process and what its log says it did."""

    def __init__(self, name: str, process: Process) -> None:
        self.name, self.process = name, process
        self.ready = anyio.Event()
        self.published: list[str] = []  # ticks, as the log says, in order

    async def read_log(self) -> None:
        assert self.process.stderr is not None
        async for chunk in _lines(self.process.stderr):
            try:
                event = str(json.loads(chunk).get("event", ""))
            except ValueError:
                continue
            if event.startswith(f"scheduler {self.name} ready"):
                self.ready.set()
            elif event.startswith(f"scheduler {self.name} published tick"):
                self.published.append(event.split()[4])


async def _lines(stream: anyio.abc.ByteReceiveStream) -> AsyncIterator[str]:
    buffered = BufferedByteReceiveStream(stream)
    while True:
        try:
            yield (await buffered.receive_until(b"\n", 1 << 20)).decode()
        except (anyio.EndOfStream, anyio.IncompleteRead):
            return


@asynccontextmanager
async def schedulers(url: str, *loops: str) -> AsyncIterator[list[Scheduler]]:
    """One scheduler process per loop, each ready; killed on the way out if still running."""
    env = {**os.environ, "CELERIAC_BROKER": url}
    async with AsyncExitStack() as stack:
        tg = await stack.enter_async_context(anyio.create_task_group())
        started = []
        for n, loop in enumerate(loops):
            name = f"s{n}-{loop}"
            command = [
                sys.executable,
                "-m",
                "celeriac",
                "--log-level",
                "DEBUG",
                "--log-format",
                "json",
            ]
            command += ["scheduler", APP, "--name", name, "--loop", loop]
            process = await anyio.open_process(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            stack.push_async_callback(_reap, process)
            scheduler = Scheduler(name, process)
            tg.start_soon(scheduler.read_log)
            started.append(scheduler)
        with anyio.fail_after(60):
            for scheduler in started:
                await scheduler.ready.wait()
        yield started


async def _reap(process: Process) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        await process.wait()
        await process.aclose()


async def published(url: str) -> list[tuple[datetime, str]]:
    """Every message on the queue: (tick, message id), checked against its headers."""
    broker, codec = open_broker(url, Hub()), Codec()
    await broker.connect()
    try:
        found = []
        while deliveries := await broker.fetch(["default"], 1000, 0.5):
            for delivery in deliveries:
                envelope = codec.decode(delivery.body)
                assert (envelope.name, envelope.id) == ("ticks.second", delivery.id)
                found.append(
                    (datetime.fromisoformat(envelope.headers["celeriac-tick"]), envelope.id)
                )
            await broker.ack(deliveries)
        return sorted(found)
    finally:
        await broker.close()


async def store_time(url: str) -> datetime:
    coordinator = open_coordinator(url, Hub())
    await coordinator.connect()
    try:
        return from_timestamp(await coordinator.time())
    finally:
        await coordinator.close()


async def test_two_scheduler_processes_publish_each_tick_once_when_one_is_killed(
    store_urls: dict[str, str],
) -> None:
    async def proof(store: str, url: str) -> None:
        await each_tick_is_published_once_across_a_kill(url)

    await side_by_side(proof, store_urls)


async def each_tick_is_published_once_across_a_kill(url: str) -> None:
    """The proof on one store: two schedulers for ``RUN`` seconds, one killed at ``KILL_AT``."""
    async with schedulers(url, "asyncio", "trio") as (first, second):
        ready_at = anyio.current_time()
        await anyio.sleep_until(ready_at + KILL_AT)
        # Kill the one that published the latest tick: the takeover is what is tested.
        killed, survivor = sorted([first, second], key=lambda s: max(s.published, default=""))[::-1]
        assert killed.published, "a scheduler published ticks before the kill"
        killed.process.send_signal(signal.SIGKILL)
        killed_at = await store_time(url)
        await killed.process.wait()
        await anyio.sleep_until(ready_at + RUN)
        survivor.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await survivor.process.wait() == 0

    messages = await published(url)
    ticks = sorted({tick for tick, _ in messages})
    assert all(id == tick_id("ticks", "ticks.second", tick) for tick, id in messages)
    # Every second from the first tick to the last, over the minute, the kill inside.
    assert [int(t.timestamp()) for t in ticks] == list(
        range(int(ticks[0].timestamp()), int(ticks[-1].timestamp()) + 1)
    )
    assert len(ticks) >= RUN - 2, f"{len(ticks)} ticks: the run did not last {RUN:.0f} s"
    assert ticks[0] < killed_at
    assert (ticks[-1] - killed_at).total_seconds() > 2 * LEASE
    assert any(datetime.fromisoformat(t) > killed_at for t in survivor.published)
    # Exactly once each (one id per tick, checked above), but for the one exception.
    copies = Counter(tick for tick, _ in messages)
    assert sorted(copies.values())[-2:] in ([1, 1], [1, 2]), copies.most_common(3)
