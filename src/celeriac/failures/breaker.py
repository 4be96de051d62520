"""Circuit breakers: a task's configuration (:class:`CircuitBreaker`) and its state machine.

Terms are the standard ones (the CEP mixes them up: "the circuit is opened again and
tasks may execute" means the opposite of what "open" means below):

* **closed** — the task runs; unexpected failures and bad health reports are counted;
* **open** — the breaker *tripped*: the task is suspended (its messages wait) until
  ``reopens_at``;
* **half-open** — the suspension is over; the next run is a *trial*: its success closes
  the breaker (and resets the growth of the suspension), its failure trips it again.

It trips when, within the last ``window`` seconds (inclusive), the task failed
unexpectedly ``failures`` times (successes do not reset that count), or a health check
reported a state ``thresholds[state]`` times (each state counted on its own; states
without a threshold, like ``HEALTHY``, never trip it). The ``n``-th consecutive trip
(trips with no close in between) suspends for ``reset_after`` (``growth="none"``),
``reset_after * n`` (``"linear"``) or ``reset_after * 2**(n-1)`` (``"exponential"``),
at most ``max_reset``. Counting starts over at each trip.

Trips are logged as warnings, but once ``escalate_after`` trips fall within
``escalate_window`` seconds, trips log as errors until ``deescalate_after`` seconds
have passed since the last trip that met that condition (:meth:`BreakerState.log_level`).

:class:`BreakerState` does no I/O and reads no clock: every method takes ``now`` (any
monotonic clock, never decreasing), so it is driven and tested with virtual time.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections import deque
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Literal, TypeAlias

from celeriac.failures.health import HealthCheck, HealthState

__all__ = ["BreakerState", "Circuit", "CircuitBreaker", "Growth", "LogLevel"]

#: How the suspension grows with consecutive trips.
Growth: TypeAlias = Literal["none", "linear", "exponential"]
#: The level a trip is logged at.
LogLevel: TypeAlias = Literal["warning", "error"]


def _default_thresholds() -> Mapping[HealthState, int]:
    return {HealthState.UNHEALTHY: 2, HealthState.DEGRADED: 10}


def _positive_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _seconds(name: str, value: float, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0")


@dataclasses.dataclass(frozen=True)
class CircuitBreaker:
    """A task's circuit breaker configuration (immutable; the state is :class:`BreakerState`).

    ``max_reset`` defaults to ten times ``reset_after``. ``thresholds`` maps a health
    state to the number of its reports within ``window`` that trips the breaker
    (default: 2 ``UNHEALTHY`` or 10 ``DEGRADED``); ``INSECURE`` and ``UNAVAILABLE`` trip
    it only if given a threshold. ``service`` names what the breaker guards: the tasks
    whose breakers name the same service share one state (a per-service breaker: the
    failures of any of them trip it, and it suspends all of them); ``None`` gives each
    task its own.
    """

    failures: int = 3
    reset_after: float = 30.0
    health_checks: Sequence[HealthCheck] = ()
    window: float = 60.0
    growth: Growth = "none"
    max_reset: float | None = None
    thresholds: Mapping[HealthState, int] = dataclasses.field(
        default_factory=_default_thresholds, hash=False
    )
    escalate_after: int = 3
    escalate_window: float = 300.0
    deescalate_after: float = 1800.0
    service: str | None = None

    def __post_init__(self) -> None:
        _positive_count("failures", self.failures)
        _positive_count("escalate_after", self.escalate_after)
        _seconds("reset_after", self.reset_after)
        _seconds("window", self.window, positive=True)
        _seconds("escalate_window", self.escalate_window)
        _seconds("deescalate_after", self.deescalate_after)
        if self.growth not in ("none", "linear", "exponential"):
            raise ValueError(
                f"growth must be 'none', 'linear' or 'exponential', not {self.growth!r}"
            )
        if self.max_reset is not None:
            _seconds("max_reset", self.max_reset)
            if self.max_reset < self.reset_after:
                raise ValueError(
                    f"max_reset ({self.max_reset}) must be >= reset_after ({self.reset_after})"
                )
        for check in self.health_checks:
            if not isinstance(check, HealthCheck):
                raise TypeError(f"health_checks takes HealthCheck objects, got {check!r}")
        for state, count in self.thresholds.items():
            if not isinstance(state, HealthState) or state is HealthState.HEALTHY:
                raise ValueError(f"thresholds: keys are HealthStates except HEALTHY, not {state!r}")
            _positive_count(f"thresholds[{state.name}]", count)
        # Frozen all the way down: a tuple and a read-only copy of the thresholds.
        object.__setattr__(self, "health_checks", tuple(self.health_checks))
        object.__setattr__(self, "thresholds", MappingProxyType(dict(self.thresholds)))

    @property
    def reset_cap(self) -> float:
        """The longest suspension (``max_reset``, by default ``10 * reset_after``)."""
        return 10 * self.reset_after if self.max_reset is None else self.max_reset

    def reset_delay(self, consecutive_trips: int) -> float:
        """How long the ``consecutive_trips``-th trip in a row (1 for the first) suspends."""
        if consecutive_trips < 1:
            raise ValueError(f"consecutive_trips must be >= 1, got {consecutive_trips}")
        if self.growth == "none":
            grown = self.reset_after
        elif self.growth == "linear":
            grown = self.reset_after * consecutive_trips
        else:
            try:
                grown = math.ldexp(self.reset_after, min(consecutive_trips - 1, 2200))
            except OverflowError:
                grown = math.inf
        return min(self.reset_cap, grown)

    def new_state(self) -> BreakerState:
        """A fresh, closed state machine for this configuration."""
        return BreakerState(self)


class Circuit(enum.Enum):
    """Where a breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class BreakerState:
    """The state machine of one task's breaker, driven by explicit ``now`` arguments.

    Call :meth:`admit` before running the task (``False``: leave the message waiting),
    then report the run: :meth:`record_success`, :meth:`record_failure` (unexpected
    failures only), or :meth:`release` for a run with no verdict (cancelled). In the
    half-open state :meth:`admit` lets exactly one trial through until it is reported.
    Outcomes reported while open (runs started before the trip) are ignored.
    """

    def __init__(self, config: CircuitBreaker) -> None:
        self.config = config
        self._failures: deque[float] = deque()
        self._reports: dict[HealthState, deque[float]] = {s: deque() for s in config.thresholds}
        self._reopens_at: float | None = None
        self._trial = False
        self._consecutive = 0
        self._trips = 0
        self._recent_trips: deque[float] = deque()
        self._escalated_until = -math.inf

    def __repr__(self) -> str:
        where = "closed" if self._reopens_at is None else f"open until {self._reopens_at:g}"
        return f"<BreakerState {where}, {self._trips} trips>"

    @property
    def reopens_at(self) -> float | None:
        """When the current suspension ends (half-open from then on); None when closed."""
        return self._reopens_at

    @property
    def trips(self) -> int:
        """How many times the breaker tripped, in all."""
        return self._trips

    @property
    def consecutive_trips(self) -> int:
        """Trips since the breaker last closed (what the suspension grows with)."""
        return self._consecutive

    def circuit(self, now: float) -> Circuit:
        """Closed, open, or half-open at ``now``."""
        if self._reopens_at is None:
            return Circuit.CLOSED
        return Circuit.OPEN if now < self._reopens_at else Circuit.HALF_OPEN

    def allows(self, now: float) -> bool:
        """May a run start at ``now``? (A question only; :meth:`admit` claims the trial.)"""
        circuit = self.circuit(now)
        return circuit is Circuit.CLOSED or (circuit is Circuit.HALF_OPEN and not self._trial)

    def admit(self, now: float) -> bool:
        """Like :meth:`allows`, and in the half-open state a ``True`` starts the trial."""
        allowed = self.allows(now)
        if allowed and self._reopens_at is not None:
            self._trial = True
        return allowed

    def release(self, now: float) -> None:
        """A run ended with no verdict (cancelled, revoked): a trial slot is free again."""
        self._trial = False

    def record_success(self, now: float) -> None:
        """A run succeeded; in the half-open state that closes the breaker."""
        if self.circuit(now) is Circuit.HALF_OPEN:
            self._reopens_at = None
            self._trial = False
            self._consecutive = 0

    def record_failure(self, now: float) -> bool:
        """A run failed unexpectedly; returns True when that trips the breaker."""
        circuit = self.circuit(now)
        if circuit is Circuit.OPEN:
            return False
        if circuit is Circuit.HALF_OPEN:
            self._trip(now)
            return True
        return self._count(self._failures, self.config.failures, now)

    def record_health(self, state: HealthState, now: float) -> bool:
        """A health check reported ``state``; returns True when that trips the breaker."""
        reports = self._reports.get(state)
        if reports is None or self.circuit(now) is Circuit.OPEN:
            return False
        return self._count(reports, self.config.thresholds[state], now)

    def log_level(self, now: float) -> LogLevel:
        """The level to log a trip at ``now`` with: ``"error"`` while escalated."""
        return "error" if now < self._escalated_until else "warning"

    def _count(self, events: deque[float], limit: int, now: float) -> bool:
        events.append(now)
        while now - events[0] > self.config.window:
            events.popleft()
        if len(events) < limit:
            return False
        self._trip(now)
        return True

    def _trip(self, now: float) -> None:
        self._consecutive += 1
        self._trips += 1
        self._reopens_at = now + self.config.reset_delay(self._consecutive)
        self._trial = False
        self._failures.clear()
        for reports in self._reports.values():
            reports.clear()
        config = self.config
        self._recent_trips.append(now)
        while now - self._recent_trips[0] > config.escalate_window:
            self._recent_trips.popleft()
        if len(self._recent_trips) >= config.escalate_after:
            self._escalated_until = now + config.deescalate_after
