"""Cross-thread, cross-loop wake-ups.

The memory backends, the publisher's backlog and the thread pool all need one
thing anyio does not offer directly: wake a coroutine that waits in *some* event
loop (asyncio or trio, maybe in another thread) from *any* thread, without
blocking the caller. :class:`Notifier` does exactly that, race-free, with a
version counter: read :attr:`Notifier.version`, check your condition, then
``await notifier.wait(version)``, which returns at once if anything was notified
in between.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import anyio

__all__ = ["Notifier", "loop_waker"]


def loop_waker(event: anyio.Event) -> Callable[[], None]:
    """A callable that sets ``event`` from any thread, made inside ``event``'s loop."""
    owner = threading.get_ident()
    loop = asyncio._get_running_loop()
    if loop is not None:
        call_soon: Callable[[Callable[[], object]], object] = loop.call_soon_threadsafe
    else:
        import trio

        call_soon = trio.lowlevel.current_trio_token().run_sync_soon

    def wake() -> None:
        if threading.get_ident() == owner:
            event.set()
            return
        try:
            call_soon(event.set)
        except RuntimeError:  # that loop has closed: nobody is waiting any more
            pass

    return wake


class Notifier:
    """Wakes waiters in any loop from any thread. Cheap when nobody waits."""

    __slots__ = ("_lock", "_version", "_waiters")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = 0
        self._waiters: list[Callable[[], None]] = []

    @property
    def version(self) -> int:
        """Increases by one with every :meth:`notify`."""
        return self._version

    def notify(self) -> None:
        """Wake every current waiter."""
        with self._lock:
            self._version += 1
            waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()

    async def wait(self, since: int, timeout: float | None = None) -> bool:
        """Wait until :attr:`version` differs from ``since``; False on timeout."""
        if self._version != since:
            return True
        event = anyio.Event()
        wake = loop_waker(event)
        with self._lock:
            if self._version != since:
                return True
            self._waiters.append(wake)
        try:
            if timeout is None:
                await event.wait()
                return True
            with anyio.move_on_after(timeout):
                await event.wait()
                return True
            return False
        finally:
            if not event.is_set():
                with self._lock:
                    try:
                        self._waiters.remove(wake)
                    except ValueError:
                        pass
