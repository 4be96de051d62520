"""Coordinators shared by real processes: a global limit, a global rate, a killed holder.

Four processes (two on asyncio, two on trio) of ``_hammer.py`` work on one store,
for each backend that several processes can share: SQLite (one machine), Redis
and PostgreSQL (the shared servers, a prefix or schema of each test's own).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from tests.coordination._hammer import BURST, LIMIT, RATE

from celeriac.abc import Coordinator
from celeriac.brokers import Hub
from celeriac.coordination import open_coordinator

# The backends whose store several processes share (fixture shared_url, conftest.py).
BACKENDS = ["sqlite", "redis", "postgresql"]

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.parametrize("shared_url", BACKENDS, indirect=True),
]

HAMMER = str(Path(__file__).with_name("_hammer.py"))
LOOPS = ["asyncio", "trio", "asyncio", "trio"]


@pytest.fixture
def anyio_backend() -> str:
    """The test only waits on its processes, which run on both loops themselves."""
    return "asyncio"


@pytest.fixture
async def coordinator(shared_url: str) -> AsyncIterator[Coordinator]:
    """The test's own view of the store (its clock, mostly)."""
    coordinator = open_coordinator(shared_url, Hub())
    await coordinator.connect()
    try:
        yield coordinator
    finally:
        await coordinator.close()


async def _line(stream: BufferedByteReceiveStream) -> str:
    return (await stream.receive_until(b"\n", 10_000)).decode()


@asynccontextmanager
async def _spawned(*args: str) -> AsyncIterator[list[tuple[Process, BufferedByteReceiveStream]]]:
    """The four processes, each ``ready``; killed on the way out if still running."""
    async with AsyncExitStack() as stack:
        spawned = []
        for loop in LOOPS:
            command = [sys.executable, HAMMER, args[0], loop, *args[1:]]
            process = await anyio.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
            )
            stack.push_async_callback(_reap, process)
            assert process.stdout is not None
            spawned.append((process, BufferedByteReceiveStream(process.stdout)))
        with anyio.fail_after(60):
            for _, out in spawned:
                assert await _line(out) == "ready"
        yield spawned


async def _reap(process: Process) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        await process.wait()
        await process.aclose()


async def _run(
    coordinator: Coordinator,
    spawned: list[tuple[Process, BufferedByteReceiveStream]],
    seconds: float,
) -> list[str]:
    """Start every process on the same window of the store's clock; their last lines."""
    start = await coordinator.time() + 0.5
    for process, _ in spawned:
        assert process.stdin is not None
        await process.stdin.send(f"{start!r} {start + seconds!r}\n".encode())
    with anyio.fail_after(seconds + 60):
        results = [await _line(out) for _, out in spawned]
        assert [await process.wait() for process, _ in spawned] == [0] * len(spawned)
    return results


async def test_four_processes_never_hold_more_than_two_slots_at_once(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    log, key = tmp_path / "sections", f"sem-{uuid.uuid4().hex[:8]}"
    async with _spawned("semaphore", coordinator.url, key, str(log)) as spawned:
        counts = await _run(coordinator, spawned, seconds=3.0)
    sections = [line.split() for line in log.read_text().splitlines()]
    assert sum(map(int, counts)) == len(sections) >= 20
    assert len({pid for pid, _, _ in sections}) >= 2
    # At equal instants a start counts before an end: the stricter reading.
    edges = sorted(
        [(int(began), 0, +1) for _, began, _ in sections]
        + [(int(ended), 1, -1) for _, _, ended in sections]
    )
    inside = most = 0
    for _, _, step in edges:
        inside += step
        most = max(most, inside)
    assert most == LIMIT  # reached, never passed
    assert await coordinator.holding(key) == 0


async def test_four_processes_share_one_rate_of_twenty_per_second(
    coordinator: Coordinator,
) -> None:
    # Every unit counted was admitted within the 5 s window of the store's clock, and
    # GCRA admits at most BURST + RATE * 5 = 105 units in it: that bound is exact. The
    # lower one is liveness only: 70 % of the rate leaves room for the machine to
    # stall for over a second, while a limiter admitting at half the rate (BURST + 50)
    # falls short of it.
    key = f"rate-{uuid.uuid4().hex[:8]}"
    async with _spawned("throttle", coordinator.url, key) as spawned:
        results = await _run(coordinator, spawned, seconds=5.0)
    admitted = sum(int(line.split()[0]) for line in results)
    expected = RATE * 5
    assert admitted <= expected + BURST + 2
    assert admitted >= 0.7 * expected


async def test_a_killed_holders_slot_comes_back_after_its_ttl(coordinator: Coordinator) -> None:
    key, ttl = f"held-{uuid.uuid4().hex[:8]}", 3.0
    command = [sys.executable, HAMMER, "hold", "trio", coordinator.url, key, str(ttl)]
    async with await anyio.open_process(command, stdout=subprocess.PIPE, stderr=None) as process:
        assert process.stdout is not None
        with anyio.fail_after(60):
            word, before = (await _line(BufferedByteReceiveStream(process.stdout))).split()
        assert word == "held"
        process.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL
    # The dead holder's lease lives on: no one is admitted before it ran out, which is
    # at least ttl after ``before``. (Had the machine stalled that long since the kill,
    # "next" may be admitted here, but never earlier than that.)
    admitted = await coordinator.acquire(key, "next", 1, ttl)
    assert not admitted or await coordinator.time() >= float(before) + ttl
    assert await coordinator.holding(key) == 1
    with anyio.fail_after(ttl + 30):
        while not await coordinator.acquire(key, "next", 1, ttl):
            await anyio.sleep(0.05)
    assert await coordinator.time() >= float(before) + ttl  # not a moment too soon
