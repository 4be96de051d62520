"""One process of the multi-process coordinator tests (``test_processes.py`` runs four).

    python _hammer.py semaphore LOOP URL KEY LOG   critical sections under acquire(limit=2)
    python _hammer.py throttle LOOP URL KEY        counts what throttle(20/s, burst 5) admits
    python _hammer.py hold LOOP URL KEY TTL        takes the only slot, then waits to be killed

``LOOP`` is ``asyncio`` or ``trio``. The first two connect, print ``ready``, read
``START END`` (the store's clock) from stdin, wait for ``START``, work until ``END``
and print what they did. ``hold`` prints ``held T`` (the store's clock just before
it acquired) and sleeps.
"""

from __future__ import annotations

import os
import random
import sys
import time

import anyio

from celeriac.abc import Coordinator
from celeriac.brokers import Hub
from celeriac.coordination import open_coordinator

LIMIT = 2
RATE, BURST = 20.0, 5


async def _started(coordinator: Coordinator) -> float:
    """Report ready, read the window, wait for its start; its end."""
    print("ready", flush=True)
    start, end = map(float, sys.stdin.readline().split())
    while await coordinator.time() < start:
        await anyio.sleep(0.005)
    return end


async def semaphore(coordinator: Coordinator, key: str, log: str) -> None:
    """Hold one of LIMIT slots for a few ms at a time; log each section's start and end.

    A section's times are taken after ``acquire`` returned and before ``release`` is
    called, on the machine-wide monotonic clock, so they lie within the lease.
    """
    end = await _started(coordinator)
    me, sections = f"pid-{os.getpid()}", 0
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while await coordinator.time() < end:
            if not await coordinator.acquire(key, me, LIMIT, ttl=30):
                await anyio.sleep(0.001)
                continue
            began = time.monotonic_ns()
            await anyio.sleep(random.uniform(0.001, 0.01))
            ended = time.monotonic_ns()
            await coordinator.release(key, me)
            os.write(fd, f"{me} {began} {ended}\n".encode())  # one write: appended whole
            sections += 1
    finally:
        os.close(fd)
    print(sections, flush=True)


async def throttle(coordinator: Coordinator, key: str) -> None:
    """Ask as fast as told until END; count units surely admitted within the window.

    A unit counts when the store's clock read before asking is at or after START
    and the one read after the answer at or before END; one admitted across END is
    reported apart (``late``).
    """
    end = await _started(coordinator)
    admitted = late = 0
    while (before := await coordinator.time()) < end:
        wait = await coordinator.throttle(key, RATE, BURST)
        if wait > 0:
            await anyio.sleep(min(wait, end - before))
        elif await coordinator.time() <= end:
            admitted += 1
        else:
            late += 1
    print(admitted, late, flush=True)


async def hold(coordinator: Coordinator, key: str, ttl: float) -> None:
    """Take the only slot and never give it back: the test kills this process."""
    before = await coordinator.time()
    assert await coordinator.acquire(key, "doomed", 1, ttl)
    print("held", before, flush=True)
    await anyio.sleep(3600)


async def main(mode: str, url: str, key: str, *rest: str) -> None:
    coordinator = open_coordinator(url, Hub())
    await coordinator.connect()
    try:
        if mode == "semaphore":
            await semaphore(coordinator, key, rest[0])
        elif mode == "throttle":
            await throttle(coordinator, key)
        else:
            await hold(coordinator, key, float(rest[0]))
    finally:
        await coordinator.close()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], *sys.argv[3:], backend=sys.argv[2])
