"""``ServiceActor``: a long-running coroutine with a graceful stop, as an actor.

A *service* is a coroutine ``run(*, task_status)`` that reports readiness through
``task_status`` and runs until told to finish, plus an optional coroutine ``stop``
that tells it to finish its work. :class:`ServiceActor` runs the service in a task
group the actor owns as a resource, so its stop is graceful: ``on_stop`` first
awaits ``stop`` (shielded), and only then is whatever is left cancelled. A failure
of the service crashes the actor, and its supervisor decides what happens next;
the service object outlives the actor, so a restart resumes its state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from ._actor import Actor

__all__ = ["ServiceActor"]


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
