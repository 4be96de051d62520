"""``ActorSystem`` and ``actor_system()``: the root of a supervision tree.

``actor_system(root)`` owns the root task group. It starts the root actor (usually a
``Supervisor``) and yields once everything has booted; leaving the block shuts the
tree down, children before what they depend on. If the root crashes (a supervisor
escalating past its restart intensity), the block is cancelled and ActorError is
raised from the crash, the way a task group raises a child's error.

The system keeps the one ``ActorRef`` per path, so refs stay valid across restarts
and ``lookup`` finds actors by name. It is per instance: nothing is global.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from celeriac.errors import ActorError

from ._actor import Actor, _Runner
from ._ref import ActorRef
from ._state import ActorStatus

__all__ = ["ActorSystem", "actor_system"]


class ActorSystem:
    """A running supervision tree: look actors up, report health, shut down.

    Made by ``actor_system()``; not constructed directly.
    """

    def __init__(self, shutdown_timeout: float) -> None:
        self._shutdown_timeout = shutdown_timeout
        self._refs: dict[str, ActorRef[Any]] = {}
        self._runner: _Runner | None = None
        self._body: anyio.CancelScope | None = None
        self.failure: BaseException | None = None
        """Why the root actor crashed, if it did."""

    @property
    def root(self) -> ActorRef[Any]:
        """The root actor's ref."""
        assert self._runner is not None
        return self._runner.ref

    def lookup(self, name: str) -> ActorRef[Any]:
        """The ref of the actor at path ``name``, or whose path ends with ``/name``.

        ``"consumer"``, ``"worker/consumer"`` and ``"root/worker/consumer"`` all find
        ``root/worker/consumer`` as long as they are unambiguous. Raises ActorError
        when no actor or more than one matches.
        """
        ref = self._refs.get(name)
        if ref is not None:
            return ref
        suffix = "/" + name
        found = [ref for path, ref in self._refs.items() if path.endswith(suffix)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise ActorError(f"no actor is named {name!r}")
        paths = ", ".join(ref.path for ref in found)
        raise ActorError(f"{name!r} is ambiguous: {paths}")

    def health(self) -> dict[str, ActorStatus]:
        """A snapshot of every actor's state, by path, parents before children."""
        return {
            path: ActorStatus(
                path,
                ref.state,
                ref.restarts,
                None if ref.failure is None else repr(ref.failure),
            )
            for path, ref in self._refs.items()
        }

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop the whole tree gracefully, in reverse dependency order.

        Each child has its own ``shutdown_timeout``; if the tree as a whole takes
        longer than ``timeout`` (default: the system's), what is left is cancelled.
        Calling it again, or after the root ended, does nothing.
        """
        if self._runner is not None:
            await self._runner.stop(self._shutdown_timeout if timeout is None else timeout)

    def _ref(self, path: str) -> ActorRef[Any]:
        ref = self._refs.get(path)
        if ref is None:
            ref = self._refs[path] = ActorRef(path)
        return ref

    def _forget(self, path: str) -> None:
        prefix = path + "/"
        for key in [key for key in self._refs if key == path or key.startswith(prefix)]:
            del self._refs[key]

    def _root_exited(self, runner: _Runner, failure: BaseException | None) -> None:
        if failure is not None:
            self.failure = failure
            if self._body is not None:
                self._body.cancel()


@asynccontextmanager
async def actor_system(
    root: Actor[Any], *, name: str = "root", shutdown_timeout: float = 30.0
) -> AsyncIterator[ActorSystem]:
    """Run ``root`` (at path ``name``) for the duration of the ``async with`` block.

    The block starts once the root is STARTED, i.e. once every mandatory boot step
    below it has started; a failed one raises BootError here instead. On the way
    out the tree is shut down (see ``ActorSystem.shutdown``), even if the block was
    cancelled. If the root crashed, ActorError is raised from its crash.
    """
    system = ActorSystem(shutdown_timeout)
    runner = system._runner = _Runner(system._ref(name), lambda: root, system, system._root_exited)
    error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        try:
            await tg.start(runner.run)
        except Exception as exc:
            error = exc
        else:
            try:
                with anyio.CancelScope() as system._body:
                    if system.failure is not None:
                        system._body.cancel()
                    yield system
            except BaseException as exc:
                error = exc  # raised below, out of the task group, so it is not grouped
            finally:
                with anyio.CancelScope(shield=True):
                    await system.shutdown()
    if error is not None:
        raise error
    if system.failure is not None:
        raise ActorError(f"the root actor {name!r} crashed: {system.failure!r}") from system.failure
