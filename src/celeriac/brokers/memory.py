"""``memory://[name]``: an in-process broker for ``celeriac dev`` and tests.

State lives in the App's :class:`~celeriac.brokers.Hub`, so every broker the same
App opens on the same name shares its queues, from any thread and any event loop
(the test mode runs its worker in a background thread's loop). Nothing survives
the process: it is the fast path, not a durable one.

URL options: ``visibility_timeout`` (seconds a fetched message stays leased
before it is handed out again, default 30).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from celeriac.abc import DeadLetter, Delivery, Outgoing, QueueStats, WorkerInfo
from celeriac.brokers._hub import Hub
from celeriac.brokers._memory_store import QueueStore
from celeriac.brokers._url import BackendURL
from celeriac.errors import BrokerError

__all__ = ["MemoryBroker"]


class MemoryBroker:
    """A broker whose queues live in this process (see the module docstring)."""

    def __init__(self, url: str = "memory://", hub: Hub | None = None) -> None:
        parsed = BackendURL(url)
        self.url = url
        #: the store's name: ``memory://NAME``, ``"default"`` when left out
        self.name = parsed.netloc or "default"
        self.visibility_timeout = parsed.number("visibility_timeout", 30.0)
        parsed.finish()
        self._store = (hub or Hub()).get("memory-broker", self.name, QueueStore)
        self._closed = False

    def __repr__(self) -> str:
        return f"<MemoryBroker {self.url!r}>"

    def _check(self) -> QueueStore:
        if self._closed:
            raise BrokerError(f"{self.url}: the broker is closed")
        return self._store

    async def connect(self) -> None:
        """Nothing to open; allowed again after :meth:`close`."""
        self._closed = False

    async def close(self) -> None:
        """Stop this instance; its unacked deliveries return when their lease ends."""
        self._closed = True

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Enqueue ``messages``; wakes fetchers waiting in any thread or loop."""
        self._check().publish(messages)

    async def fetch(
        self,
        queues: Sequence[str],
        limit: int,
        timeout: float,
    ) -> list[Delivery]:
        """Up to ``limit`` due messages, waiting up to ``timeout`` seconds for one."""
        store = self._check()
        await anyio.lowlevel.checkpoint()
        if limit <= 0:
            return []
        deadline = anyio.current_time() + timeout
        while True:
            version = store.notifier.version
            out, wake_in = store.claim(queues, limit, self.visibility_timeout)
            if out:
                return out
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return out
            await store.notifier.wait(version, min(remaining, wake_in))
            self._check()

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Forget these deliveries for good."""
        self._check().ack(deliveries)

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        """Return these deliveries to their queue, due again after ``delay`` seconds."""
        self._check().nack(deliveries, delay)

    async def extend(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Keep these deliveries leased for ``seconds`` more."""
        self._check().extend(deliveries, seconds)

    async def dead_letter(self, deliveries: Sequence[Delivery], reason: str) -> None:
        """Move these deliveries to the dead-letter store."""
        self._check().dead_letter(deliveries, reason)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters, newest first."""
        return self._check().dead_letters(limit)

    async def replay(self, ids: Sequence[str]) -> int:
        """Re-publish these dead letters unchanged; return how many."""
        store = self._check()
        messages = store.take_dead_letters(ids)
        if messages:
            store.publish(messages)
        return len(messages)

    async def purge_dead_letters(self) -> int:
        """Delete all dead letters; return how many."""
        return self._check().purge_dead_letters()

    async def revoke(self, ids: Sequence[str], ttl: float) -> None:
        """Record these ids as revoked for ``ttl`` seconds."""
        self._check().revoke(ids, ttl)

    async def revoked_since(self, cursor: Any) -> tuple[list[str], Any]:
        """Ids revoked after ``cursor`` (an opaque integer), and the new cursor."""
        return self._check().revoked_since(cursor)

    async def stats(self) -> Mapping[str, QueueStats]:
        """Counts per queue ever published to."""
        return self._check().stats()

    async def purge(self, queue: str) -> int:
        """Delete every message waiting in ``queue``; return how many."""
        return self._check().purge(queue)

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Record that a worker is alive for ``ttl`` seconds."""
        self._check().heartbeat(info, ttl)

    async def workers(self) -> list[WorkerInfo]:
        """The workers whose last heartbeat has not expired."""
        return self._check().workers()

    async def forget_worker(self, name: str) -> None:
        """Remove a worker's heartbeat."""
        self._check().forget_worker(name)
