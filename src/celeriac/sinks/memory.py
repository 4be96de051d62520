"""``memory://[name]``: an in-process data sink for ``celeriac dev`` and tests.

Documents live in the App's :class:`~celeriac.brokers.Hub`, shared by every sink
the App opens on the same name, from any thread and any event loop. A
:meth:`MemorySink.wait` is woken by the store of one of *its* ids only, so many
waiting results cost nothing per store. URL options: none.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Sequence

import anyio
import anyio.lowlevel

from celeriac._notify import Notifier
from celeriac.abc import StoredDocument
from celeriac.brokers._hub import Hub
from celeriac.brokers._url import BackendURL
from celeriac.errors import BrokerError

__all__ = ["MemorySink"]


class _DocumentStore:
    """Documents by id, with expiry and per-id waiters; shared across threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.docs: dict[str, tuple[StoredDocument, float]] = {}
        self.expiry: list[tuple[float, int, str]] = []
        self.waiters: dict[str, list[Notifier]] = {}
        self._seq = itertools.count()

    def write(
        self, documents: Sequence[StoredDocument], ttl: float | None, only_absent: bool
    ) -> None:
        mono = time.monotonic()
        until = float("inf") if ttl is None else mono + ttl
        woken: list[Notifier] = []
        with self.lock:
            docs = self.docs
            for doc in documents:
                if only_absent:
                    current = docs.get(doc.id)
                    if current is not None and current[1] > mono:
                        continue
                docs[doc.id] = (doc, until)
                if ttl is not None:
                    heapq.heappush(self.expiry, (until, next(self._seq), doc.id))
                if self.waiters:
                    woken.extend(self.waiters.get(doc.id, ()))
            self._sweep(mono)
        for notifier in woken:
            notifier.notify()

    def _sweep(self, mono: float) -> None:
        expiry = self.expiry
        while expiry and expiry[0][0] <= mono:
            until, _, key = heapq.heappop(expiry)
            current = self.docs.get(key)
            if current is not None and current[1] == until:
                del self.docs[key]

    def read(self, ids: Sequence[str], states: frozenset[str] | None) -> dict[str, StoredDocument]:
        """Live documents among ``ids`` (whose state is in ``states``, if given)."""
        mono = time.monotonic()
        found: dict[str, StoredDocument] = {}
        docs = self.docs
        for key in ids:
            entry = docs.get(key)
            if (
                entry is not None
                and entry[1] > mono
                and (states is None or entry[0].state in states)
            ):
                found[key] = entry[0]
        return found


class MemorySink:
    """A data sink whose documents live in this process (see the module docstring)."""

    def __init__(self, url: str = "memory://", hub: Hub | None = None) -> None:
        parsed = BackendURL(url)
        parsed.ignore("visibility_timeout")  # the same URL often names the broker too
        parsed.finish()
        self.url = url
        #: the store's name: ``memory://NAME``, ``"default"`` when left out
        self.name = parsed.netloc or "default"
        self._store = (hub or Hub()).get("memory-sink", self.name, _DocumentStore)
        self._closed = False

    def __repr__(self) -> str:
        return f"<MemorySink {self.url!r}>"

    def _check(self) -> _DocumentStore:
        if self._closed:
            raise BrokerError(f"{self.url}: the sink is closed")
        return self._store

    async def connect(self) -> None:
        """Nothing to open; allowed again after :meth:`close`."""
        self._closed = False

    async def close(self) -> None:
        """Stop this instance (the documents stay in the hub)."""
        self._closed = True

    async def store(self, documents: Sequence[StoredDocument], ttl: float | None) -> None:
        """Upsert ``documents``, each expiring after ``ttl`` seconds (``None``: never)."""
        self._check().write(documents, ttl, only_absent=False)

    async def store_if_absent(self, documents: Sequence[StoredDocument], ttl: float | None) -> None:
        """Write each document only where no live document has its id."""
        self._check().write(documents, ttl, only_absent=True)

    async def get(self, ids: Sequence[str]) -> dict[str, StoredDocument]:
        """The live documents among ``ids``."""
        store = self._check()
        with store.lock:
            return store.read(ids, None)

    async def wait(
        self,
        ids: Sequence[str],
        timeout: float,
        states: frozenset[str],
    ) -> dict[str, StoredDocument]:
        """Documents among ``ids`` in ``states``, as soon as there is one (or at timeout)."""
        store = self._check()
        await anyio.lowlevel.checkpoint()
        keys = list(dict.fromkeys(ids))
        notifier = Notifier()
        version = notifier.version  # read before the check: a later store changes it
        with store.lock:
            found = store.read(keys, states)
            if found or timeout <= 0:
                return found
            for key in keys:
                store.waiters.setdefault(key, []).append(notifier)
        deadline = anyio.current_time() + timeout
        try:
            while (remaining := deadline - anyio.current_time()) > 0:
                await notifier.wait(version, remaining)
                version = notifier.version
                with store.lock:
                    found = store.read(keys, states)
                if found:
                    return found
            return {}
        finally:
            with store.lock:
                for key in keys:
                    waiting = store.waiters.get(key)
                    if waiting is not None:
                        waiting.remove(notifier)
                        if not waiting:
                            del store.waiters[key]

    async def forget(self, ids: Sequence[str]) -> None:
        """Delete these documents."""
        store = self._check()
        with store.lock:
            for key in ids:
                store.docs.pop(key, None)
