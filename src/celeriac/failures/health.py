"""Health checks: a user function that reports a :class:`HealthState`, and one run of it.

A health check is any function of no arguments, sync or ``async``, returning a
:class:`HealthState`. :func:`run_check` runs it once: a coroutine function on the
caller's event loop, a plain function in a worker thread (so a blocking probe does not
stall the loop), under a time limit (the check's ``timeout``, by default its period
``every``). It never raises for the check's own failures, since a failing check's
exception is logged, not fatal: it returns the record with

* the state the function returned;
* ``UNHEALTHY`` and ``error`` set when the function raised, ran out of time, or
  returned something that is not a :class:`HealthState` (each logged as an error on
  the ``celeriac.health`` logger).

Cancellation of the caller goes through unchanged. Scheduling runs every ``every``
seconds (see :meth:`HealthCheck.due`) belongs to the worker, not to this module.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TypeAlias

import anyio
import anyio.to_thread

__all__ = ["HealthCheck", "HealthFunction", "HealthState", "run_check"]

log = logging.getLogger("celeriac.health")


class HealthState(enum.Enum):
    """What a health check reports (the CEP's states).

    ``UNAVAILABLE`` is the CEP's *permanently unavailable* (404, method not allowed).
    """

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    INSECURE = "insecure"
    UNAVAILABLE = "unavailable"


#: A health check function: no arguments, returns (or awaits to) a HealthState.
HealthFunction: TypeAlias = Callable[[], HealthState | Awaitable[HealthState]]


@dataclasses.dataclass(frozen=True)
class HealthCheck:
    """A named health check and its last result.

    ``every`` is its period in seconds; ``timeout`` bounds one run (``None``: ``every``).
    ``state``, ``error`` and ``last_run`` describe the last run (``None`` before the
    first); :func:`run_check` returns an updated copy.
    """

    name: str
    function: HealthFunction
    every: float = 10.0
    timeout: float | None = None
    state: HealthState | None = None
    error: str | None = None
    last_run: float | None = None

    def __post_init__(self) -> None:
        if not callable(self.function):
            raise TypeError(f"health check {self.name!r}: function must be callable")
        for name in ("every", "timeout"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"health check {self.name!r}: {name} must be > 0, got {value}")

    def __call__(self) -> HealthState | Awaitable[HealthState]:
        """Call the function directly (no time limit, exceptions raised)."""
        return self.function()

    @property
    def limit(self) -> float:
        """The time one run may take."""
        return self.every if self.timeout is None else self.timeout

    def due(self, now: float) -> bool:
        """True when the check should run at ``now``: never ran, or ``every`` has passed."""
        return self.last_run is None or now >= self.last_run + self.every


async def run_check(check: HealthCheck, now: float) -> HealthCheck:
    """Run ``check`` once and return it with ``state``, ``error`` and ``last_run=now`` set."""
    error: str
    with anyio.move_on_after(check.limit) as scope:
        try:
            result = await _call(check.function)
        except Exception as exc:
            log.error("health check %s failed", check.name, exc_info=exc)
            error = f"raised {type(exc).__qualname__}: {exc}"
        else:
            if isinstance(result, HealthState):
                return dataclasses.replace(check, state=result, error=None, last_run=now)
            error = f"returned {result!r}, not a HealthState"
            log.error("health check %s %s", check.name, error)
    if scope.cancelled_caught:
        error = f"timed out after {check.limit:g} s"
        log.error("health check %s %s", check.name, error)
    return dataclasses.replace(check, state=HealthState.UNHEALTHY, error=error, last_run=now)


async def _call(function: HealthFunction) -> object:
    if inspect.iscoroutinefunction(function):
        return await function()
    # In a tuple: trio refuses a thread function that returns a coroutine, and a lambda
    # returning one is still an async check. abandon_on_cancel: a hung probe in a
    # thread cannot hold up its time limit.
    (result,) = await anyio.to_thread.run_sync(lambda: (function(),), abandon_on_cancel=True)
    if inspect.isawaitable(result):
        return await result
    return result
