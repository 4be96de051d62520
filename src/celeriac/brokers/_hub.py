"""The :class:`Hub`: in-process state shared by the backends one App opens.

An App owns exactly one hub and passes it to every backend it opens through the
scheme registry. In-memory backends keep their stores in it, keyed by kind and
name, so ``memory://`` brokers and sinks made by the same App share state, while
two Apps (two tests, say) never do. Server backends may ignore it, or keep
something worth sharing in it (a connection pool per URL).

A hub is thread-safe: the App's test mode runs a worker in a background thread's
event loop while the producer runs in the main thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import TypeVar, cast

__all__ = ["Hub"]

T = TypeVar("T")


class Hub:
    """Per-App holder of shared in-process stores, keyed by ``(kind, name)``."""

    __slots__ = ("_items", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, Hashable], object] = {}

    def get(self, kind: str, name: Hashable, factory: Callable[[], T]) -> T:
        """The store for ``(kind, name)``, made by ``factory()`` on first use.

        ``kind`` separates backends (``"memory-broker"``, ``"memory-sink"``...), so
        two backends never see each other's stores under the same name. The caller
        must always ask a given kind for the same type.
        """
        key = (kind, name)
        with self._lock:
            try:
                return cast(T, self._items[key])
            except KeyError:
                item = self._items[key] = factory()
                return item

    def __repr__(self) -> str:
        return f"<Hub with {len(self._items)} store(s)>"
