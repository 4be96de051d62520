"""The autoscaler's arithmetic (CEP "Autoscaler"), as a pure object.

The scheduler samples the queues now and then and feeds each :class:`Sample` to
:meth:`Autoscaler.observe`, which answers with a :class:`Recommendation`:

* *demand* is what could run now: ready messages minus those of suspended tasks
  (they would only be rejected), plus the messages in flight, plus the periodic
  ticks due before the next sampling; delayed messages are not demand yet;
* *capacity* is the sum of the live workers' maximum concurrency; *per worker*
  is ``per_worker`` if given, else ``capacity // workers`` (at least 1), else 1;
  an unknown capacity (0) counts as ``workers * per_worker``;
* demand above capacity (or fewer workers than ``min_workers``) means "up" to
  ``ceil(demand / per_worker)`` workers, and at least one more than now;
* demand below ``low_water * capacity`` with more than ``min_workers`` workers
  means "down" to ``ceil(demand / per_worker)``; more workers than
  ``max_workers`` means "down" to ``max_workers``; anything else is "hold";
* desired workers always lie in ``[min_workers, max_workers]``; an "up" already
  at ``max_workers`` or a "down" already at ``min_workers`` is a "hold";
* after each up/down event nothing else moves for a cooldown, which starts at
  ``cooldown`` and is multiplied by ``factor`` after each event, up to
  ``max_cooldown``; a recommendation during a cooldown is "hold" and says what
  it would have done. Once a whole ``max_cooldown`` has passed after the end of
  the last cooldown with no event, the next cooldown is ``cooldown`` again.

:class:`Autoscaler` does no I/O and reads no clock: each sample carries its time
``at`` (the store's clock, in seconds, not decreasing), so it is tested directly.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

__all__ = ["Autoscaler", "Direction", "Recommendation", "Sample"]

Direction = Literal["up", "down", "hold"]


class Sample(msgspec.Struct, frozen=True):
    """What the scheduler saw at one sampling."""

    at: float  # seconds, the store's clock
    ready: int  # messages due now, all queues
    delayed: int  # waiting for their eta (not demand yet)
    in_flight: int  # handed out, not acked (running or buffered in workers)
    suspended: int  # of `ready`, messages of suspended tasks: not runnable, no demand
    upcoming: int  # periodic ticks due within the next sampling interval
    workers: int  # live workers
    capacity: int  # sum of live workers' maximum concurrency (0 if unknown)


class Recommendation(msgspec.Struct, frozen=True):
    """What the autoscaler advises after one sample, and why."""

    direction: Direction
    workers: int  # desired number of workers
    concurrency: int  # desired total concurrency (demand, clamped)
    demand: int  # ready - suspended + in_flight + upcoming
    capacity: int
    reason: str  # one human sentence: why
    at: float
    cooldown_until: float  # no new up/down before this


class Autoscaler:
    """Turns samples into up/down/hold recommendations (see the module docstring)."""

    def __init__(
        self,
        *,
        min_workers: int = 1,
        max_workers: int | None = None,
        per_worker: int | None = None,
        cooldown: float = 5.0,
        max_cooldown: float = 300.0,
        factor: float = 2.0,
        low_water: float = 0.5,
    ) -> None:
        if min_workers < 0:
            raise ValueError(f"min_workers must be at least 0, got {min_workers}")
        if max_workers is not None and max_workers < max(min_workers, 1):
            raise ValueError(
                f"max_workers must be at least max(min_workers, 1) = {max(min_workers, 1)},"
                f" got {max_workers}"
            )
        if per_worker is not None and per_worker < 1:
            raise ValueError(f"per_worker must be at least 1, got {per_worker}")
        if not 0 <= cooldown <= max_cooldown:
            raise ValueError(
                f"need 0 <= cooldown <= max_cooldown, got {cooldown} and {max_cooldown}"
            )
        if not factor >= 1:
            raise ValueError(f"factor must be at least 1, got {factor}")
        if not 0 <= low_water <= 1:
            raise ValueError(f"low_water must be between 0 and 1, got {low_water}")
        self.min_workers = min_workers
        self.max_workers = max_workers
        self.per_worker = per_worker
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.factor = factor
        self.low_water = low_water
        self._next = cooldown  # the cooldown the next event starts
        self._until = -math.inf  # the end of the current (or last) cooldown

    def __repr__(self) -> str:
        top = "" if self.max_workers is None else str(self.max_workers)
        return f"Autoscaler({self.min_workers}..{top} workers, next cooldown {self._next:g}s)"

    @property
    def cooldown_until(self) -> float:
        """The end of the current or last cooldown (``-inf`` before the first event)."""
        return self._until

    def observe(self, sample: Sample) -> Recommendation:
        """Take one sample into account and say what to do."""
        counts = (sample.ready, sample.delayed, sample.in_flight, sample.suspended)
        if min(*counts, sample.upcoming, sample.workers, sample.capacity) < 0:
            raise ValueError(f"a sample's counts cannot be negative: {sample}")
        at = sample.at
        if at >= self._until + self.max_cooldown:
            self._next = self.cooldown  # a quiet max_cooldown: start over
        per_worker = self._per_worker(sample)
        demand = max(0, sample.ready - sample.suspended) + sample.in_flight + sample.upcoming
        capacity = sample.capacity if sample.capacity > 0 else sample.workers * per_worker
        direction, workers, reason = self._decide(sample.workers, demand, capacity, per_worker)
        if direction != "hold":
            if at < self._until:
                reason = (
                    f"cooling down until {self._until:g}: would have scaled {direction}"
                    f" to {workers} workers ({reason})"
                )
                direction, workers = "hold", self._clamp(sample.workers)
            else:
                self._until = at + self._next
                self._next = min(self._next * self.factor, self.max_cooldown)
        return Recommendation(
            direction=direction,
            workers=workers,
            concurrency=min(demand, workers * per_worker),
            demand=demand,
            capacity=capacity,
            reason=reason,
            at=at,
            cooldown_until=max(self._until, at),
        )

    def _per_worker(self, sample: Sample) -> int:
        if self.per_worker is not None:
            return self.per_worker
        if sample.workers > 0 and sample.capacity > 0:
            return max(1, sample.capacity // sample.workers)
        return 1

    def _clamp(self, workers: int) -> int:
        workers = max(self.min_workers, workers)
        return workers if self.max_workers is None else min(self.max_workers, workers)

    def _decide(
        self, workers: int, demand: int, capacity: int, per_worker: int
    ) -> tuple[Direction, int, str]:
        needed = math.ceil(demand / per_worker)
        if self.max_workers is not None and workers > self.max_workers:
            return "down", self.max_workers, f"{workers} workers exceed max_workers"
        if demand > capacity or workers < self.min_workers:
            target = max(self.min_workers, needed)
            if demand > capacity:
                target = max(target, workers + 1)
                why = f"demand {demand} exceeds capacity {capacity} of {workers} workers"
            else:
                why = f"{workers} workers is below min_workers {self.min_workers}"
            target = self._clamp(target)
            if target <= workers:
                return "hold", workers, f"{why}, but max_workers is {self.max_workers}"
            return "up", target, why
        if demand < self.low_water * capacity:
            why = f"demand {demand} is below {self.low_water:.0%} of capacity {capacity}"
            target = self._clamp(needed)
            if workers <= self.min_workers:
                return "hold", workers, f"{why}, but min_workers is {self.min_workers}"
            if target >= workers:
                return "hold", workers, f"{why}, but it still needs {workers} workers"
            return "down", target, why
        return "hold", workers, f"demand {demand} fits capacity {capacity} of {workers} workers"
