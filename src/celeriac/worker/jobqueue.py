"""The internal task queue of one task kind: priority ordered, FIFO within a priority."""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

__all__ = ["JobQueue"]

T = TypeVar("T")


class JobQueue(Generic[T]):
    """An unbounded priority queue for one event loop (higher priority first).

    Bounding happens upstream: the consumer never holds more than its prefetch.
    ``get`` returns ``None`` once the queue is closed and empty.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, T]] = []
        self._seq = itertools.count()
        self._event = anyio.Event()
        self._closed = False
        self._gets = 0

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, item: T, priority: int) -> None:
        """Add ``item``; higher ``priority`` is taken first."""
        heapq.heappush(self._heap, (-priority, next(self._seq), item))
        if not self._event.is_set():
            self._event.set()

    def close(self) -> None:
        """Wake every waiting ``get``; they return ``None`` once the queue is empty."""
        self._closed = True
        self._event.set()

    def drain(self) -> list[T]:
        """Remove and return everything queued, in priority order."""
        items = [heapq.heappop(self._heap)[2] for _ in range(len(self._heap))]
        return items

    async def get(self) -> T | None:
        """The next item, waiting for one; ``None`` when closed and empty.

        Never loses an item to cancellation: the only awaits happen before the pop.
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
            if self._event.is_set():
                self._event = anyio.Event()
            await self._event.wait()
