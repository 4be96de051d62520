"""Failure handling as pure parts: retry policies, sections, breakers, health checks.

None of these modules does I/O or reads a clock (``run_check`` only calls the user's
function); the worker wires them in. See ``docs/failure-handling.md``.

* :class:`Retry` — a bounded retry policy (exponential or linear, full jitter);
* :func:`poisonous`, :func:`retry`, :func:`optional` — sections with their own policy,
  read back with :func:`policy_of`; :func:`decide` turns a failure into
  :class:`RetryIn` or :class:`GiveUp`;
* :class:`CircuitBreaker` and its state machine :class:`BreakerState`;
* :class:`HealthState`, :class:`HealthCheck` and :func:`run_check`.
"""

from __future__ import annotations

from celeriac.failures.backoff import Retry
from celeriac.failures.breaker import BreakerState, Circuit, CircuitBreaker, Growth, LogLevel
from celeriac.failures.decision import Decision, GiveUp, RetryIn, decide
from celeriac.failures.health import HealthCheck, HealthFunction, HealthState, run_check
from celeriac.failures.sections import (
    POLICY_ATTRIBUTE,
    OptionalSection,
    Poisonous,
    Policy,
    PolicySection,
    optional,
    poisonous,
    policy_of,
    retry,
)

__all__ = [
    "BreakerState",
    "Circuit",
    "CircuitBreaker",
    "Decision",
    "GiveUp",
    "Growth",
    "HealthCheck",
    "HealthFunction",
    "HealthState",
    "LogLevel",
    "OptionalSection",
    "POLICY_ATTRIBUTE",
    "Poisonous",
    "Policy",
    "PolicySection",
    "Retry",
    "RetryIn",
    "decide",
    "optional",
    "poisonous",
    "policy_of",
    "retry",
    "run_check",
]
