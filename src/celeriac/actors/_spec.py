"""What a supervisor is told about its children, and the I/O-free decisions it makes.

``ChildSpec`` describes one child (a boot step, in the CEP's words); ``Restart`` and
``Strategy`` are OTP's restart policies and strategies; ``Backoff`` spaces restarts;
``StartChild`` and ``StopChild`` are the messages that change children at run time.
``boot_order`` sorts children by their ``depends_on`` with ``graphlib``; ``_Intensity``
counts restarts in a sliding window. Both are pure and tested directly.
"""

from __future__ import annotations

import graphlib
import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from celeriac.errors import ConfigurationError

from ._actor import Actor

__all__ = ["Backoff", "ChildSpec", "Restart", "StartChild", "StopChild", "Strategy", "boot_order"]


class Restart(Enum):
    """When a child that ended is started again (OTP's ``restart`` of a child spec)."""

    PERMANENT = "permanent"
    """Always, whether it crashed or stopped by itself."""
    TRANSIENT = "transient"
    """Only if it crashed; a normal stop is final."""
    TEMPORARY = "temporary"
    """Never; the child is removed from its supervisor when it ends."""


class Strategy(Enum):
    """Which children a supervisor restarts when one of them must be restarted."""

    ONE_FOR_ONE = "one_for_one"
    """Only the child that ended."""
    ONE_FOR_ALL = "one_for_all"
    """All running children: the others are stopped (in reverse order) first."""
    REST_FOR_ONE = "rest_for_one"
    """The child that ended and the running children started after it."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delay before a restart: ``initial * factor ** (n - 1)``, capped.

    ``n`` is the number of restarts within the supervisor's intensity period,
    so the delay falls back to ``initial`` once the children have been calm a while.
    """

    initial: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0

    def delay(self, restarts: int) -> float:
        """The delay (seconds) before restart number ``restarts`` (1 for the first)."""
        if restarts <= 0:
            return 0.0
        return min(self.maximum, self.initial * self.factor ** (restarts - 1))


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child of a supervisor: how to make it and how to look after it.

    ``factory`` is called for each start (an ``Actor`` subclass works), so each
    restart begins with a fresh instance. ``depends_on`` names siblings that must be
    STARTED first; they are stopped after this child.

    ``mandatory`` children are boot steps the system cannot run without: if one
    fails to start, start-up stops with BootError. An optional child that fails to
    start is logged and tried again every ``retry_interval`` seconds, at most
    ``max_attempts`` times in all (None: until it starts); children that depend on it
    wait and are started as soon as it is. A mandatory child cannot depend on an
    optional one.

    ``shutdown_timeout`` bounds its graceful stop, after which it is cancelled.
    """

    name: str
    factory: Callable[[], Actor[Any]]
    restart: Restart = Restart.PERMANENT
    depends_on: tuple[str, ...] = ()
    mandatory: bool = True
    retry_interval: float = 5.0
    max_attempts: int | None = None
    shutdown_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigurationError(f"child name {self.name!r} must be non-empty, without '/'")
        if isinstance(self.depends_on, str):
            raise ConfigurationError(f"{self.name}: depends_on must be a tuple of names")


def boot_order(specs: Sequence[ChildSpec]) -> list[ChildSpec]:
    """Sort ``specs`` so each comes after what it depends on; check the graph.

    Among children whose dependencies are met, the one declared first goes first,
    so independent children keep their declared order. Raises ConfigurationError
    for duplicate names, unknown dependencies, cycles, and a mandatory child that
    depends on an optional one.
    """
    index: dict[str, int] = {}
    for position, spec in enumerate(specs):
        if spec.name in index:
            raise ConfigurationError(f"two children are named {spec.name!r}")
        index[spec.name] = position
    for spec in specs:
        for dependency in spec.depends_on:
            if dependency not in index:
                raise ConfigurationError(f"{spec.name!r} depends on unknown child {dependency!r}")
            if spec.mandatory and not specs[index[dependency]].mandatory:
                raise ConfigurationError(
                    f"mandatory child {spec.name!r} depends on optional child {dependency!r}: "
                    "make it optional too"
                )
    sorter = graphlib.TopologicalSorter({spec.name: spec.depends_on for spec in specs})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise ConfigurationError(f"the children's dependencies form a cycle: {cycle}") from exc
    ready: list[int] = []
    order: list[ChildSpec] = []
    while sorter.is_active():
        for name in sorter.get_ready():
            heapq.heappush(ready, index[name])
        spec = specs[heapq.heappop(ready)]
        order.append(spec)
        sorter.done(spec.name)
    return order


@dataclass(frozen=True, slots=True)
class StartChild:
    """Ask a supervisor to add and start a child; the reply is its ``ActorRef``.

    The child boots like one declared up front: a mandatory child that fails to
    start makes the ask raise (and is not added); an optional one is retried.
    """

    spec: ChildSpec


@dataclass(frozen=True, slots=True)
class StopChild:
    """Ask a supervisor to stop a child and forget it (no child may depend on it)."""

    name: str


class _Intensity:
    """OTP's restart intensity: at most ``max_restarts`` within ``period`` seconds."""

    __slots__ = ("_times", "max_restarts", "period")

    def __init__(self, max_restarts: int, period: float) -> None:
        self.max_restarts = max_restarts
        self.period = period
        self._times: deque[float] = deque()

    def record(self, now: float) -> int | None:
        """Count a restart at ``now``; return how many are in the window, None if too many."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.period:
            self._times.popleft()
        if len(self._times) > self.max_restarts:
            return None
        return len(self._times)
