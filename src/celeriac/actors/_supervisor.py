"""``Supervisor``: an actor that starts, watches and restarts its children.

Children run as tasks in a task group the supervisor enters in ``on_start`` (into its
exit stack, so the group is entered and left by the supervisor's own task). They
start one by one in dependency order, each awaited with ``task_group.start``, and
stop in reverse order when the supervisor stops, crashes or fails to boot.

A child's exit is reported back as a message on an internal stream; the
supervisor's ``run`` loop applies the restart policy and strategy, under a lock that
also serialises boot retries and ``StartChild``/``StopChild`` requests. Restarting
more than ``max_restarts`` times within ``period`` seconds makes ``run`` raise: the
supervisor crashes, its children are stopped, and its own parent decides next.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import anyio
from anyio.abc import TaskGroup

from celeriac.errors import ActorError, BootError

from ._actor import Actor, _Runner
from ._ref import ActorRef
from ._spec import (
    Backoff,
    ChildSpec,
    Restart,
    StartChild,
    StopChild,
    Strategy,
    _Intensity,
    boot_order,
)
from ._state import State

__all__ = ["Supervisor"]

logger = logging.getLogger("celeriac.actors")

_Exit = tuple[_Runner, BaseException | None]


class _Child:
    __slots__ = ("ref", "retrying", "runner", "spec", "waiting")

    def __init__(self, spec: ChildSpec, ref: ActorRef[Any]) -> None:
        self.spec = spec
        self.ref = ref
        self.runner: _Runner | None = None
        self.waiting = False  # for a dependency to start
        self.retrying = False  # an optional child's start, retried in the background


class Supervisor(Actor[StartChild | StopChild]):
    """Runs children, in dependency order, and restarts them by OTP's rules.

    ``strategy`` picks which children restart together; each child's ``Restart``
    policy says whether it restarts at all. More than ``max_restarts`` restarts
    within ``period`` seconds crash the supervisor. With ``backoff``, a restart
    waits ``backoff.delay(n)`` seconds, ``n`` being the restarts in the period.
    Dependency cycles and unknown names raise ConfigurationError here, at once.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec] = (),
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        period: float = 5.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._specs = boot_order(children)
        self._strategy = strategy
        self._intensity = _Intensity(max_restarts, period)
        self._backoff = backoff
        self._children: dict[str, _Child] = {}
        self._helpers: TaskGroup | None = None
        self._to_retry: list[_Child] = []

    async def on_start(self) -> None:
        """Start the children in dependency order; BootError if a mandatory one fails."""
        stack = self.resources
        self._lock = anyio.Lock()
        self._exits_in, self._exits = anyio.create_memory_object_stream[_Exit](math.inf)
        stack.callback(self._exits.close)
        stack.callback(self._exits_in.close)
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        stack.push_async_callback(self._stop_all)
        for spec in self._specs:
            self._children[spec.name] = _Child(spec, self.system._ref(self._path(spec.name)))
        for child in list(self._children.values()):
            await self._boot(child)

    async def run(self) -> None:
        """Watch the children: restart them, retry optional boot steps, or give up."""
        give_up: ActorError | None = None
        async with anyio.create_task_group() as helpers:
            self._helpers = helpers
            for child in self._to_retry:
                helpers.start_soon(self._retry, child)
            self._to_retry.clear()
            async for runner, failure in self._exits:
                async with self._lock:
                    give_up = await self._child_exited(runner, failure)
                if give_up is not None:
                    helpers.cancel_scope.cancel()
                    break
        if give_up is not None:
            raise give_up

    async def receive(self, message: StartChild | StopChild) -> ActorRef[Any] | None:
        """Handle ``StartChild`` (reply: the child's ref) and ``StopChild``."""
        async with self._lock:
            if isinstance(message, StartChild):
                return await self._add(message.spec)
            if isinstance(message, StopChild):
                await self._remove(message.name)
                return None
        raise ActorError(f"a supervisor does not handle {message!r}")

    # -- boot ---------------------------------------------------------------------

    async def _boot(self, child: _Child) -> None:
        if not self._dependencies_started(child):
            child.waiting = True
            logger.warning("%s waits for %s", child.ref.path, ", ".join(child.spec.depends_on))
            return
        try:
            await self._start(child)
        except Exception as exc:
            if child.spec.mandatory:
                if isinstance(exc, BootError):
                    raise  # a nested supervisor's step: that message names the real culprit
                raise BootError(f"boot step {child.ref.path!r} failed to start: {exc!r}") from exc
            logger.warning(
                "optional boot step %s failed to start (%r); retrying in %ss",
                child.ref.path,
                exc,
                child.spec.retry_interval,
            )
            self._schedule_retry(child)

    def _schedule_retry(self, child: _Child) -> None:
        child.retrying = True
        if self._helpers is None:
            self._to_retry.append(child)  # run() spawns it
        else:
            self._helpers.start_soon(self._retry, child)

    async def _retry(self, child: _Child) -> None:
        spec, attempts = child.spec, 1
        while spec.max_attempts is None or attempts < spec.max_attempts:
            await anyio.sleep(spec.retry_interval)
            attempts += 1
            async with self._lock:
                if self._children.get(spec.name) is not child or self._running(child):
                    return
                try:
                    await self._start(child)
                except Exception as exc:
                    logger.warning("%s: attempt %d failed: %r", child.ref.path, attempts, exc)
                    continue
                child.retrying = False
                logger.info("%s started on attempt %d", child.ref.path, attempts)
                await self._start_waiting()
                return
        child.retrying = False
        logger.error("%s: giving up after %d attempts", child.ref.path, attempts)

    async def _start_waiting(self) -> None:
        for child in list(self._children.values()):
            if child.waiting and self._dependencies_started(child):
                child.waiting = False
                try:
                    await self._start(child)
                except Exception as exc:
                    logger.warning("%s failed to start (%r); retrying", child.ref.path, exc)
                    self._schedule_retry(child)

    # -- supervision --------------------------------------------------------------

    async def _child_exited(
        self, runner: _Runner, failure: BaseException | None
    ) -> ActorError | None:
        child = next((c for c in self._children.values() if c.runner is runner), None)
        if child is None:
            return None  # an incarnation we stopped or replaced ourselves
        child.runner = None
        policy = child.spec.restart
        if policy is Restart.TEMPORARY or (policy is Restart.TRANSIENT and failure is None):
            logger.info("%s ended (%s): not restarted", child.ref.path, policy.name)
            if policy is Restart.TEMPORARY:
                self._forget(child)
            return None
        return await self._restart(child, failure)

    async def _restart(self, culprit: _Child, reason: BaseException | None) -> ActorError | None:
        """Restart ``culprit`` and its group; start failures count as more restarts."""
        pending: list[_Child] = []
        while True:
            restarts = self._intensity.record(anyio.current_time())
            if restarts is None:
                what = f"crashed: {reason!r}" if reason is not None else "stopped"
                error = ActorError(
                    f"supervisor {self.ref.path!r} gave up after more than "
                    f"{self._intensity.max_restarts} restarts in {self._intensity.period}s; "
                    f"last, {culprit.ref.path!r} {what}"
                )
                error.__cause__ = reason
                return error
            for child in reversed(self._group(culprit)):
                if child is not culprit:
                    await self._stop(child)
                if child.spec.restart is Restart.TEMPORARY and child is not culprit:
                    self._forget(child)
                elif child not in pending:
                    pending.append(child)
            order = list(self._children.values())
            pending.sort(key=order.index)
            if self._backoff is not None:
                await anyio.sleep(self._backoff.delay(restarts))
            failed = await self._start_in_order(pending)
            if failed is None:
                await self._start_waiting()
                return None
            culprit, reason = failed

    async def _start_in_order(self, pending: list[_Child]) -> tuple[_Child, Exception] | None:
        """Start ``pending`` front to back; stop at (and return) a mandatory failure.

        Optional children that fail are retried in the background; children whose
        dependencies are not running wait for them.
        """
        while pending:
            child = pending[0]
            if not self._dependencies_started(child):
                child.waiting = True
            else:
                try:
                    await self._start(child)
                except Exception as exc:
                    if child.spec.mandatory:
                        return child, exc
                    logger.warning("%s failed to restart (%r); retrying", child.ref.path, exc)
                    self._schedule_retry(child)
            pending.pop(0)
        return None

    def _group(self, culprit: _Child) -> list[_Child]:
        """The children restarted with ``culprit``, in start order."""
        if self._strategy is Strategy.ONE_FOR_ONE:
            return [culprit]
        order = list(self._children.values())
        if self._strategy is Strategy.REST_FOR_ONE:
            order = order[order.index(culprit) :]
        return [c for c in order if c is culprit or self._running(c)]

    # -- children -----------------------------------------------------------------

    def _path(self, name: str) -> str:
        return f"{self.ref.path}/{name}"

    def _running(self, child: _Child) -> bool:
        return child.runner is not None and not child.runner.done.is_set()

    def _dependencies_started(self, child: _Child) -> bool:
        return all(
            self._children[name].ref.state is State.STARTED for name in child.spec.depends_on
        )

    async def _start(self, child: _Child) -> None:
        runner = _Runner(child.ref, child.spec.factory, self.system, self._exited)
        child.runner = runner
        await self._tg.start(runner.run)

    async def _stop(self, child: _Child) -> None:
        runner, child.runner = child.runner, None
        if runner is not None:
            await runner.stop(child.spec.shutdown_timeout)

    async def _stop_all(self) -> None:
        for child in reversed(list(self._children.values())):
            await self._stop(child)

    def _exited(self, runner: _Runner, failure: BaseException | None) -> None:
        try:
            self._exits_in.send_nowait((runner, failure))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # we are stopping: our own stop order is what matters now

    def _forget(self, child: _Child) -> None:
        del self._children[child.spec.name]
        self.system._forget(child.ref.path)

    async def _add(self, spec: ChildSpec) -> ActorRef[Any]:
        boot_order([c.spec for c in self._children.values()] + [spec])  # checks the graph
        child = _Child(spec, self.system._ref(self._path(spec.name)))
        self._children[spec.name] = child
        try:
            await self._boot(child)
        except BaseException:
            self._forget(child)
            raise
        return child.ref

    async def _remove(self, name: str) -> None:
        child = self._children.get(name)
        if child is None:
            raise ActorError(f"{self.ref.path!r} has no child {name!r}")
        dependents = [c.spec.name for c in self._children.values() if name in c.spec.depends_on]
        if dependents:
            raise ActorError(f"cannot stop {name!r}: children depend on it: {dependents}")
        self._forget(child)
        await self._stop(child)
