"""The internal task queue of one task kind: priority ordered, FIFO within a priority."""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

__all__ = ["JobQueue"]

T = TypeVar("T")


class JobQueue(Generic[T]):
    """An unbounded priority queue for one event loop (higher priority first).

    Bounding happens upstream: the consumer never holds more than its prefetch.
    ``get`` returns ``None`` once the queue is closed and empty. A ``put`` wakes
    one waiting ``get``, not all of them: a worker has dozens of idle runners, and
    waking each for every job cost more than running a no-op task.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, T]] = []
        self._seq = itertools.count()
        self._waiters: deque[anyio.Event] = deque()
        self._closed = False
        self._gets = 0

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, item: T, priority: int) -> None:
        """Add ``item``; higher ``priority`` is taken first."""
        heapq.heappush(self._heap, (-priority, next(self._seq), item))
        self._wake_one()

    def _wake_one(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()

    def close(self) -> None:
        """Wake every waiting ``get``; they return ``None`` once the queue is empty."""
        self._closed = True
        while self._waiters:
            self._waiters.popleft().set()

    def drain(self) -> list[T]:
        """Remove and return everything queued, in priority order."""
        items = [heapq.heappop(self._heap)[2] for _ in range(len(self._heap))]
        return items

    async def get(self) -> T | None:
        """The next item, waiting for one; ``None`` when closed and empty.

        Never loses an item to cancellation: the only awaits happen before the pop,
        and a waiter woken for an item but cancelled first passes the wake-up on.
        """
        heap = self._heap
        while True:
            if heap:
                self._gets += 1
                if self._gets % 64 == 0:
                    # Runners that always find work would otherwise never yield to the loop.
                    await anyio.lowlevel.checkpoint()
                    if not heap:
                        continue
                return heapq.heappop(heap)[2]
            if self._closed:
                return None
            event = anyio.Event()
            self._waiters.append(event)
            try:
                await event.wait()
            except BaseException:
                if event.is_set():
                    if heap or self._closed:
                        self._wake_one()
                else:
                    self._waiters.remove(event)
                raise
