"""Worker parts as actors: each is a boot step of the worker's supervisor.

A *service* is a long-running coroutine (``run``, reporting readiness through
``task_status``) plus a graceful ``stop``. :class:`ServiceActor` runs one in a
task group the actor owns as a resource, so the supervisor's stop is graceful:
``on_stop`` first asks the service to finish its work (``stop``), and only then
is whatever is left cancelled. Stopping children in reverse dependency order
therefore *is* the worker's shutdown sequence: the consumer stops fetching, the
executors give running tasks their grace period, the result publisher settles
everything, and the connections close last.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from celeriac.actors import Actor

if TYPE_CHECKING:
    from celeriac.runtime import Bridge, Runtime

__all__ = ["ConnectionsActor", "ServiceActor"]


class ServiceActor(Actor[None]):
    """Runs one service for the lifetime of the actor; a failure crashes the actor."""

    def __init__(
        self,
        run: Callable[..., Awaitable[None]],
        stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._run = run
        self._stop = stop
        self._tg: anyio.abc.TaskGroup | None = None

    async def on_start(self) -> None:
        """Start the service; the actor is started once the service reports ready."""
        self._tg = await self.resources.enter_async_context(anyio.create_task_group())
        await self._tg.start(self._serve)

    async def _serve(
        self, *, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self._run(task_status=task_status)

    async def on_stop(self) -> None:
        """Stop the service gracefully, then cancel what is left of it."""
        if self._stop is not None:
            with anyio.CancelScope(shield=True):
                await self._stop()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()


class ConnectionsActor(Actor[None]):
    """Holds the worker's runtime open: broker and sink connections, publisher."""

    def __init__(self, runtime: Runtime, bridge: Bridge) -> None:
        self.runtime = runtime
        self.bridge = bridge

    async def on_start(self) -> None:
        """Connect, and let tasks that publish from this loop use these connections."""
        await self.resources.enter_async_context(self.runtime.running())
        self.bridge.attach(self.runtime)

    async def on_stop(self) -> None:
        """Stop routing callers here; the connections close with the resources."""
        self.bridge.detach(self.runtime)
