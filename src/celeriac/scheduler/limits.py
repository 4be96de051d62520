"""Concurrency limits and rate limits of tasks: what a user declares (CEP "Scheduler").

``@app.task(concurrency=2)`` — at most two runs at once across all workers;
``Limit(1, key="user_id")`` — one at a time per value of the ``user_id`` argument
(a *concurrency token*); ``Limit(range=(1, 20), measure=free_connections)`` — a
limit that ``measure()`` recomputes from outside facts, kept within the range;
``Limit(4, scope="worker")`` — per worker instead of global. ``rate_limit="200/m"``
or ``RateLimit("10/s", scope="worker")`` — smooth (GCRA) rate limits.

Global limits live in the app's coordinator (``docs/coordination.md``): leased
semaphores, so a worker that dies gives its slots back; GCRA for rates. The
worker's side is :mod:`celeriac.worker.gate`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

__all__ = ["Limit", "RateLimit", "Scope", "limit_of", "parse_rate", "rate_limit_of"]

Scope = Literal["global", "worker"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*(?:\.\d+)?)\s*([smhd])\s*$")


def parse_rate(text: str) -> float:
    """``"200/m"`` -> 3.333... per second. Units: s, m, h, d; ``"5/10s"`` works too."""
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"not a rate: {text!r} (write it like '10/s', '200/m' or '5/10s')")
    count, every, unit = float(match[1]), float(match[2] or 1), _UNITS[match[3]]
    if count <= 0 or every <= 0:
        raise ValueError(f"a rate must be positive: {text!r}")
    return count / (every * unit)


@dataclasses.dataclass(frozen=True)
class Limit:
    """How many runs of a task may go on at once (see the module docstring).

    Give ``limit`` (a fixed number, 0 stops the task: its messages wait) or
    ``range=(low, high)`` with ``measure``, a function of no arguments whose value
    (clamped to the range) is the current limit, re-evaluated every ``every``
    seconds. ``key`` names an argument of the task: each of its values has a limit
    of its own. ``scope`` is ``"global"`` (all workers, in the coordinator) or
    ``"worker"``. ``lease`` is how long a held slot outlives a worker that died.
    """

    limit: int | None = None
    key: str | None = None
    scope: Scope = "global"
    range: tuple[int, int] | None = None
    measure: Callable[[], float] | None = None
    every: float = 5.0
    lease: float = 30.0

    def __post_init__(self) -> None:
        if (self.limit is None) == (self.range is None):
            raise ValueError("give a Limit either a limit or a range (with measure)")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"a concurrency limit cannot be negative: {self.limit}")
        if self.range is not None:
            low, high = self.range
            if not 0 <= low <= high:
                raise ValueError(f"range must be (low, high) with 0 <= low <= high: {self.range}")
            if self.measure is None or not callable(self.measure):
                raise ValueError("a range limit needs measure=, a function returning the limit")
        if self.scope not in ("global", "worker"):
            raise ValueError(f"scope must be 'global' or 'worker', not {self.scope!r}")
        if not (math.isfinite(self.every) and self.every > 0):
            raise ValueError(f"every must be > 0: {self.every}")
        if not (math.isfinite(self.lease) and self.lease > 0):
            raise ValueError(f"lease must be > 0: {self.lease}")

    def token(self, kwargs: Mapping[str, Any], args: tuple[Any, ...], names: list[str]) -> str:
        """The concurrency token of one call: the ``key`` argument's value, or ``""``."""
        if self.key is None:
            return ""
        if self.key in kwargs:
            return str(kwargs[self.key])
        if self.key in names and names.index(self.key) < len(args):
            return str(args[names.index(self.key)])
        return ""

    def current(self, measured: float | None) -> int:
        """The limit now: the fixed one, or ``measured`` clamped to the range."""
        if self.limit is not None:
            return self.limit
        assert self.range is not None
        low, high = self.range
        if measured is None or not math.isfinite(measured):
            return low
        return max(low, min(high, int(measured)))


@dataclasses.dataclass(frozen=True)
class RateLimit:
    """At most ``rate`` runs (``"10/s"``, ``"200/m"``) of a task, smoothly (GCRA).

    ``burst`` runs may go at once after a quiet spell (default 1: perfectly smooth).
    ``scope`` is ``"global"`` (all workers) or ``"worker"``.
    """

    rate: str
    scope: Scope = "global"
    burst: int = 1

    def __post_init__(self) -> None:
        parse_rate(self.rate)
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1: {self.burst}")
        if self.scope not in ("global", "worker"):
            raise ValueError(f"scope must be 'global' or 'worker', not {self.scope!r}")

    @property
    def per_second(self) -> float:
        """The rate in runs per second."""
        return parse_rate(self.rate)


def limit_of(value: int | Limit | None) -> Limit | None:
    """The task option ``concurrency=`` as a :class:`Limit` (an int is a global limit)."""
    if value is None or isinstance(value, Limit):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"concurrency must be an int or a Limit, not {value!r}")
    return Limit(value)


def rate_limit_of(value: str | RateLimit | None) -> RateLimit | None:
    """The task option ``rate_limit=`` as a :class:`RateLimit` (a string is global)."""
    if value is None or isinstance(value, RateLimit):
        return value
    if not isinstance(value, str):
        raise TypeError(f"rate_limit must be a string like '10/s' or a RateLimit, not {value!r}")
    return RateLimit(value)
