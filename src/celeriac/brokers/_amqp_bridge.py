"""Running aio-pika, an asyncio library, from any event loop.

:class:`Runner` runs the client's coroutines on the caller's own loop when that is
asyncio, and on a private asyncio loop in a daemon thread otherwise (trio), so the
backend's code is the same in both cases; a caller cancelled while its coroutine
ran on the other loop can undo what that coroutine took. :class:`Signal` is a
version counter waiters on that loop can wait for.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import sniffio

from celeriac._notify import loop_waker
from celeriac.errors import BrokerError

__all__ = ["Runner", "Signal", "cancelling"]

T = TypeVar("T")


class Runner:
    """Runs coroutine functions on the asyncio loop the client lives on."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Pick the loop: the running one if it is asyncio, else a new one in a thread."""
        if self.loop is not None:
            return
        if sniffio.current_async_library() == "asyncio":
            self.loop = asyncio.get_running_loop()
            return
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="celeriac-amqp", daemon=True)
        self._thread.start()
        self.loop = loop

    async def stop(self) -> None:
        """Stop the private loop, if there is one (after the client closed)."""
        loop, thread, self.loop, self._thread = self.loop, self._thread, None, None
        if thread is not None and loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            await anyio.to_thread.run_sync(thread.join)
            loop.close()

    async def call(
        self,
        fn: Callable[..., Coroutine[Any, Any, T]],
        *args: Any,
        undo: Callable[[T], None] | None = None,
    ) -> T:
        """``await fn(*args)`` on the client's loop.

        If the caller is cancelled after ``fn`` produced its result on the other
        loop, ``undo(result)`` runs there, so nothing taken is lost in between.
        """
        loop = self.loop
        if loop is None:
            raise BrokerError("the broker is not connected")
        if self._thread is None:
            return await fn(*args)
        event = anyio.Event()
        wake = loop_waker(event)
        box: list[asyncio.Task[T]] = []

        def begin() -> None:
            task = loop.create_task(fn(*args))
            box.append(task)
            task.add_done_callback(lambda _: wake())

        loop.call_soon_threadsafe(begin)
        try:
            await event.wait()
        except BaseException:
            loop.call_soon_threadsafe(_abandon, box, undo)
            raise
        return box[0].result()


def _abandon(box: list[asyncio.Task[T]], undo: Callable[[T], None] | None) -> None:
    def settle(task: asyncio.Task[T]) -> None:
        if not task.cancelled() and task.exception() is None and undo is not None:
            undo(task.result())

    task = box[0]
    if task.done():
        settle(task)
    else:
        task.cancel()
        task.add_done_callback(settle)


class Signal:
    """A version counter that asyncio waiters can wait on (one loop only)."""

    def __init__(self) -> None:
        self.version = 0
        self._waiters: list[asyncio.Future[None]] = []

    def notify(self) -> None:
        """Wake every current waiter."""
        self.version += 1
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(self, since: int, timeout: float) -> None:
        """Return when :attr:`version` moves past ``since``, or after ``timeout``."""
        if self.version != since:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            pass
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)


def cancelling() -> bool:
    """Whether the running task is being cancelled (not just saw a CancelledError)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
