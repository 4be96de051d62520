"""The concurrency budget of one task kind (CEP "Concurrency Budget"), as a pure object.

Each task kind a worker runs (coroutines, threads, processes) has a budget: a
minimum, a maximum, and a *current* limit between them that follows the load:

* when more tasks wait in the internal queue than the current limit, the limit
  grows by that many tasks; then a cooldown runs, during which it does not grow;
* after the cooldown, if the queue still outgrows the limit, it grows
  exponentially: ``ceil(limit * exponent ** increases)``, where ``increases``
  counts the growths since the last shrink;
* when nothing is queued and fewer tasks run than the limit, it shrinks to the
  number running (never below the minimum), and the growth count starts over.

It never goes above the maximum. The scheduler's autoscaler (see
:mod:`celeriac.scheduler.autoscale`) may also steer it through :meth:`Budget.follow`:
while the cluster is told to scale up, the budget stands at its maximum (the
backlog is the cluster's, not only this worker's); a scale-down lets it shrink
to what runs at once. Callers should pass as ``queued`` the *smallest*
queue length seen since the last update, so that a queue which empties between
batches (the runners keep up) does not count as a backlog.

:class:`Budget` does no I/O and reads no clock: callers pass ``now``, so it is
tested directly and can be replaced by anything with the same ``update`` method
(see :class:`BudgetStrategy`).
"""

from __future__ import annotations

import math
from typing import Protocol

__all__ = ["Budget", "BudgetStrategy"]


class BudgetStrategy(Protocol):
    """Anything that turns (queued, running, now) into a concurrency limit."""

    @property
    def limit(self) -> int:
        """The current limit."""

    def update(self, queued: int, running: int, now: float) -> int:
        """Take the current load into account and return the new limit."""


class Budget:
    """The CEP's grow-by-backlog, cooldown, exponential-growth, shrink-to-running budget."""

    def __init__(
        self,
        minimum: int = 1,
        maximum: int = 10,
        *,
        cooldown: float = 0.5,
        exponent: float = 2.0,
    ) -> None:
        if minimum < 0 or maximum < max(minimum, 1):
            raise ValueError(
                f"need 0 <= minimum <= maximum and maximum >= 1, got {minimum}, {maximum}"
            )
        if exponent < 1:
            raise ValueError("exponent must be at least 1")
        self.minimum = minimum
        self.maximum = maximum
        self.cooldown = cooldown
        self.exponent = exponent
        self._limit = max(minimum, 1)
        self._floor = self._limit  # the least it shrinks to; the maximum while told "up"
        self._shrink = False
        self._increases = 0
        self._cooldown_until = -math.inf

    @property
    def limit(self) -> int:
        """The current limit."""
        return self._limit

    def __repr__(self) -> str:
        return f"Budget({self.minimum}..{self.maximum}, now {self._limit})"

    def follow(self, direction: str) -> None:
        """Follow the autoscaler: ``"up"`` holds the maximum, ``"down"`` shrinks at once.

        ``"hold"`` (or a recommendation that expired) gives the budget back to its
        own algorithm.
        """
        if direction == "up":
            self._floor = self._limit = self.maximum
        else:
            self._floor = max(self.minimum, 1)
            self._shrink = self._shrink or direction == "down"

    def update(self, queued: int, running: int, now: float) -> int:
        """Apply the algorithm for the current load and return the new limit."""
        if self._shrink and queued < self._limit:
            self._shrink = False
            self._limit = max(self._floor, running)
            self._increases = 0
            return self._limit
        if queued > self._limit and self._limit < self.maximum:
            if now < self._cooldown_until:
                return self._limit
            if self._increases == 0:
                grown = self._limit + queued
            else:
                grown = math.ceil(self._limit * self.exponent**self._increases)
            self._limit = min(self.maximum, max(grown, self._limit + 1))
            self._increases += 1
            self._cooldown_until = now + self.cooldown
        elif queued == 0 and running < self._limit:
            self._limit = max(self._floor, running)
            self._increases = 0
        return self._limit
