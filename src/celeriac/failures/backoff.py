"""Retry policies: how many times a failed task runs again, and how long it waits first.

A :class:`Retry` is a frozen :mod:`msgspec` struct, so a policy can travel as JSON (a
``retry()`` section inside a boxed task reaches the worker that way). It has two forms:

* **exponential** (the default, ``Retry(max_retries, backoff, max_backoff, jitter)``):
  retry *n* (0-based) waits at most ``min(max_backoff, backoff * 2**n)``;
* **linear** (``Retry.linear(max_retries, interval_start, interval_step, interval_max)``,
  the CEP's section form and Celery's ``retry_policy``): retry *n* waits
  ``min(interval_max, interval_start + interval_step * n)``.

Jitter is **full jitter**: the delay is drawn uniformly from ``[0, ceiling]``. The AWS
Architecture Blog's analysis ("Exponential Backoff And Jitter", Marc Brooker, 2015)
simulated many clients contending after a shared failure: full jitter did the least
total work of the stateless schemes and finished nearly as soon as the best one;
"equal jitter" (half fixed, half random) did more work and took longer, because its
fixed half keeps retries bunched. Decorrelated jitter needs the previous delay, which
a policy computed from the retry index alone does not have. The cost of full jitter is
that a retry may come almost at once; a task queue retrying by republishing can afford
that. The exponential form jitters by default, the linear form does not (its intervals
are usually chosen to the second); both take ``jitter=``.

``retry=None`` on a task means *no retries*: its first unexpected failure is final.
The app-wide default is ``Retry()``: 3 retries after about 1, 2 and 4 seconds.
"""

from __future__ import annotations

import math
import random
from typing import Literal

import msgspec

__all__ = ["Retry"]

#: Past this exponent ``backoff * 2**n`` exceeds any finite cap for any positive
#: ``backoff`` (2**-1074 is the smallest positive float, 2**1024 overflows).
_MAX_EXPONENT = 2200


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


class Retry(msgspec.Struct, frozen=True, tag="retry", tag_field="policy"):
    """A bounded retry policy: ``max_retries`` retries, exponential or linear delays.

    ``Retry(max_retries=3, backoff=1.0, max_backoff=60.0, jitter=True)`` is the
    exponential form; build the linear form with :meth:`Retry.linear`. ``kind`` and the
    ``interval_*`` fields belong to the linear form and are set by it. Invalid values
    raise :class:`TypeError` or :class:`ValueError` at construction (and
    :class:`msgspec.ValidationError` when decoding).
    """

    max_retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0
    jitter: bool = True
    kind: Literal["exponential", "linear"] = "exponential"
    interval_start: float = 0.0
    interval_step: float = 0.0
    interval_max: float = 0.0

    def __post_init__(self) -> None:
        _check_count("max_retries", self.max_retries)
        if not isinstance(self.jitter, bool):
            raise TypeError(f"jitter must be a bool, got {self.jitter!r}")
        for name in ("backoff", "max_backoff", "interval_start", "interval_step", "interval_max"):
            _check_seconds(name, getattr(self, name))
        if self.kind == "exponential":
            if self.max_backoff < self.backoff:
                raise ValueError(
                    f"max_backoff ({self.max_backoff}) must be >= backoff ({self.backoff})"
                )
            if (self.interval_start, self.interval_step, self.interval_max) != (0, 0, 0):
                raise ValueError("interval_* belong to the linear form: use Retry.linear(...)")
        elif self.kind == "linear":
            if self.interval_max < self.interval_start:
                raise ValueError(
                    f"interval_max ({self.interval_max}) must be >= "
                    f"interval_start ({self.interval_start})"
                )
            if (self.backoff, self.max_backoff) != (1.0, 60.0):
                raise ValueError("backoff and max_backoff belong to the exponential form")
        else:
            raise ValueError(f"kind must be 'exponential' or 'linear', got {self.kind!r}")

    @classmethod
    def linear(
        cls,
        max_retries: int,
        interval_start: float,
        interval_step: float,
        interval_max: float,
        *,
        jitter: bool = False,
    ) -> Retry:
        """The linear form: retry *n* waits ``min(interval_max, interval_start + step * n)``."""
        return cls(
            max_retries=max_retries,
            jitter=jitter,
            kind="linear",
            interval_start=interval_start,
            interval_step=interval_step,
            interval_max=interval_max,
        )

    @property
    def cap(self) -> float:
        """The longest any retry of this policy waits."""
        return self.max_backoff if self.kind == "exponential" else self.interval_max

    def ceiling(self, retry_index: int) -> float:
        """The delay before retry ``retry_index`` (0-based) without jitter, and its upper bound."""
        _check_count("retry_index", retry_index)
        if self.kind == "linear":
            try:
                grown = self.interval_start + self.interval_step * retry_index
            except OverflowError:  # an int index too large for a float
                return self.interval_max
            return min(self.interval_max, grown)
        try:
            grown = math.ldexp(self.backoff, min(retry_index, _MAX_EXPONENT))
        except OverflowError:
            return self.max_backoff
        return min(self.max_backoff, grown)

    def delay(self, retry_index: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``retry_index`` (0 for the first retry).

        With jitter the delay is uniform in ``[0, ceiling(retry_index)]``, drawn from
        ``rng`` (the :mod:`random` module's generator when ``None``); without, it is
        the ceiling itself.
        """
        ceiling = self.ceiling(retry_index)
        if not self.jitter or ceiling == 0:
            return ceiling
        draw = rng.uniform if rng is not None else random.uniform
        return min(ceiling, max(0.0, draw(0.0, ceiling)))

    def exhausted(self, retries_done: int) -> bool:
        """True when ``retries_done`` retries used up the policy: the next failure is final."""
        _check_count("retries_done", retries_done)
        return retries_done >= self.max_retries
