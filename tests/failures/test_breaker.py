"""Circuit breakers: the configuration, the CEP's examples, and a model-based state machine."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from celeriac.failures import Circuit, CircuitBreaker, HealthCheck, HealthState

UNHEALTHY, DEGRADED = HealthState.UNHEALTHY, HealthState.DEGRADED


def test_trips_at_the_third_unexpected_failure_by_default() -> None:
    state = CircuitBreaker().new_state()
    assert [state.record_failure(now) for now in (0.0, 1.0)] == [False, False]
    assert state.allows(2.0)
    assert state.record_failure(2.0) is True
    assert state.circuit(2.0) is Circuit.OPEN
    assert state.reopens_at == 32.0
    assert state.trips == 1


def test_failures_older_than_the_window_do_not_count() -> None:
    state = CircuitBreaker(failures=3, window=60).new_state()
    assert not state.record_failure(0.0)
    assert not state.record_failure(10.0)
    assert not state.record_failure(70.0)  # 0.0 has left the window
    assert state.record_failure(70.0)


def test_the_window_includes_its_edge() -> None:
    state = CircuitBreaker(failures=3, window=60).new_state()
    assert not state.record_failure(0.0)
    assert not state.record_failure(30.0)
    assert state.record_failure(60.0)


def test_successes_do_not_reset_the_failure_count() -> None:
    state = CircuitBreaker(failures=2).new_state()
    state.record_failure(0.0)
    state.record_success(1.0)
    assert state.record_failure(2.0)


def test_open_suspends_then_one_trial_closes_it() -> None:
    state = CircuitBreaker(failures=1, reset_after=30).new_state()
    state.record_failure(0.0)
    assert not state.allows(29.9)
    assert not state.admit(29.9)
    assert state.circuit(30.0) is Circuit.HALF_OPEN
    assert state.admit(30.0)
    assert not state.allows(30.0)  # one trial at a time
    assert not state.admit(31.0)
    state.record_success(40.0)
    assert state.circuit(40.0) is Circuit.CLOSED
    assert state.reopens_at is None
    assert state.allows(40.0)


def test_a_released_trial_lets_another_one_in() -> None:
    state = CircuitBreaker(failures=1, reset_after=5).new_state()
    state.record_failure(0.0)
    assert state.admit(5.0)
    state.release(6.0)
    assert state.admit(6.0)


def test_late_outcomes_while_open_are_ignored() -> None:
    state = CircuitBreaker(failures=1, reset_after=30).new_state()
    state.record_failure(0.0)
    state.record_success(1.0)
    assert not state.record_failure(2.0)
    assert not state.record_health(UNHEALTHY, 3.0)
    assert (state.circuit(4.0), state.reopens_at, state.trips) == (Circuit.OPEN, 30.0, 1)


@pytest.mark.parametrize(
    ("growth", "suspensions"),
    [
        ("none", [30, 30, 30, 30, 30]),
        ("linear", [30, 60, 90, 100, 100]),
        ("exponential", [30, 60, 100, 100, 100]),
    ],
)
def test_a_failed_trial_reopens_for_longer(growth: str, suspensions: list[float]) -> None:
    config = CircuitBreaker(failures=1, reset_after=30, growth=growth, max_reset=100)  # type: ignore[arg-type]
    state = config.new_state()
    now, seen = 0.0, []
    for _ in suspensions:
        assert state.record_failure(now)
        assert state.reopens_at is not None
        seen.append(state.reopens_at - now)
        now = state.reopens_at
    assert seen == suspensions
    state.record_success(now)  # the trial succeeds: growth starts over
    assert state.record_failure(now)
    assert state.reopens_at == now + 30
    assert state.consecutive_trips == 1


def test_the_cep_health_check_example() -> None:
    # 2 UNHEALTHY and/or 10 DEGRADED reports within 10 seconds trip the breaker.
    state = CircuitBreaker(window=10).new_state()
    assert not state.record_health(UNHEALTHY, 0.0)
    assert not state.record_health(UNHEALTHY, 11.0)  # the first one left the window
    assert state.record_health(UNHEALTHY, 12.0)

    state = CircuitBreaker(window=10).new_state()
    assert not any(state.record_health(DEGRADED, t / 2) for t in range(9))
    assert not state.record_health(UNHEALTHY, 5.0)  # counted per state
    assert state.record_health(DEGRADED, 5.0)


def test_states_without_a_threshold_never_trip() -> None:
    state = CircuitBreaker().new_state()
    for now in range(100):
        for health in (HealthState.HEALTHY, HealthState.INSECURE, HealthState.UNAVAILABLE):
            assert not state.record_health(health, float(now))
    strict = CircuitBreaker(thresholds={HealthState.UNAVAILABLE: 1}).new_state()
    assert not strict.record_health(UNHEALTHY, 0.0)
    assert strict.record_health(HealthState.UNAVAILABLE, 0.0)


def test_the_cep_escalation_example() -> None:
    # 3 trips within 5 minutes log as errors; the level drops back after 30 minutes.
    state = CircuitBreaker(failures=1, reset_after=30).new_state()
    levels = []
    for now in (0.0, 100.0, 200.0):
        state.record_success(now)  # a successful trial closes it
        state.record_failure(now)
        levels.append(state.log_level(now))
    assert levels == ["warning", "warning", "error"]
    assert state.log_level(200.0 + 1799) == "error"
    assert state.log_level(200.0 + 1800) == "warning"


def test_trips_spread_out_do_not_escalate() -> None:
    state = CircuitBreaker(failures=1, reset_after=30).new_state()
    for now in (0.0, 200.0, 400.0, 600.0):
        state.record_success(now)
        state.record_failure(now)
        assert state.log_level(now) == "warning"


def test_the_configuration_is_frozen() -> None:
    async def probe() -> HealthState:
        return HealthState.HEALTHY

    check = HealthCheck("api", probe)
    config = CircuitBreaker(health_checks=[check])
    assert config.health_checks == (check,)
    assert config.reset_cap == 300
    with pytest.raises(TypeError):
        config.thresholds[UNHEALTHY] = 1  # type: ignore[index]
    assert dict(CircuitBreaker().thresholds) == {UNHEALTHY: 2, DEGRADED: 10}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"failures": 0}, "failures must be an int >= 1"),
        ({"reset_after": -1}, "reset_after"),
        ({"window": 0}, "window must be a finite number > 0"),
        ({"growth": "cubic"}, "growth must be"),
        ({"reset_after": 60, "max_reset": 30}, r"max_reset \(30\) must be >= reset_after"),
        ({"thresholds": {HealthState.HEALTHY: 1}}, "except HEALTHY"),
        ({"thresholds": {"unhealthy": 1}}, "keys are HealthStates"),
        ({"thresholds": {UNHEALTHY: 0}}, r"thresholds\[UNHEALTHY\]"),
        ({"escalate_after": 0}, "escalate_after"),
        ({"deescalate_after": math.inf}, "deescalate_after"),
        ({"health_checks": ["payments"]}, "HealthCheck objects"),
    ],
)
def test_invalid_configurations_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        CircuitBreaker(**options)  # type: ignore[arg-type]


configs = st.builds(
    CircuitBreaker,
    failures=st.integers(1, 4),
    reset_after=st.sampled_from([0.0, 1.0, 5.0, 10.0, 30.0]),
    window=st.sampled_from([1.0, 5.0, 10.0, 30.0]),
    growth=st.sampled_from(["none", "linear", "exponential"]),
    max_reset=st.one_of(st.none(), st.sampled_from([30.0, 60.0, 120.0])),
    thresholds=st.dictionaries(
        st.sampled_from([UNHEALTHY, DEGRADED, HealthState.INSECURE]), st.integers(1, 4)
    ),
    escalate_after=st.integers(1, 4),
    escalate_window=st.sampled_from([0.0, 10.0, 60.0, 300.0]),
    deescalate_after=st.sampled_from([0.0, 5.0, 60.0, 1800.0]),
)


class BreakerMachine(RuleBasedStateMachine):
    """BreakerState against a model that keeps every event and recounts from scratch."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    @initialize(config=configs)
    def start(self, config: CircuitBreaker) -> None:
        self.config = config
        self.state = config.new_state()
        self.counted: list[tuple[str, float]] = []  # failures and reports since the last trip
        self.trip_times: list[float] = []
        self.reopens_at: float | None = None
        self.consecutive = 0
        self.trial = False

    # The model.

    def model_circuit(self) -> Circuit:
        if self.reopens_at is None:
            return Circuit.CLOSED
        return Circuit.OPEN if self.now < self.reopens_at else Circuit.HALF_OPEN

    def model_trip(self) -> None:
        self.consecutive += 1
        growth = {
            "none": 1,
            "linear": self.consecutive,
            "exponential": 2 ** (self.consecutive - 1),
        }[self.config.growth]
        cap = self.config.max_reset
        cap = 10 * self.config.reset_after if cap is None else cap
        self.reopens_at = self.now + min(cap, self.config.reset_after * growth)
        self.trip_times.append(self.now)
        self.counted = []
        self.trial = False

    def model_count(self, kind: str, limit: int) -> bool:
        self.counted.append((kind, self.now))
        recent = [t for k, t in self.counted if k == kind and self.now - t <= self.config.window]
        if len(recent) >= limit:
            self.model_trip()
            return True
        return False

    def model_level(self) -> str:
        for trip in self.trip_times:
            burst = [t for t in self.trip_times if trip - self.config.escalate_window <= t <= trip]
            escalated = len(burst) >= self.config.escalate_after
            if escalated and self.now < trip + self.config.deescalate_after:
                return "error"
        return "warning"

    # The rules.

    # Round steps, so events often land exactly on a window's or a suspension's edge.
    @rule(seconds=st.sampled_from([0, 1, 5, 10, 30, 60, 300]))
    def advance(self, seconds: int) -> None:
        self.now += seconds

    @rule()
    def advance_one_window(self) -> None:
        """Land exactly on the window's edge, where off-by-one errors live."""
        self.now += self.config.window

    @rule()
    def failure(self) -> None:
        circuit = self.model_circuit()
        if circuit is Circuit.OPEN:
            expected = False
        elif circuit is Circuit.HALF_OPEN:
            self.model_trip()
            expected = True
        else:
            expected = self.model_count("failure", self.config.failures)
        assert self.state.record_failure(self.now) is expected

    @rule(health=st.sampled_from(list(HealthState)))
    def report(self, health: HealthState) -> None:
        limit = self.config.thresholds.get(health)
        expected = False
        if limit is not None and self.model_circuit() is not Circuit.OPEN:
            expected = self.model_count(health.value, limit)
        assert self.state.record_health(health, self.now) is expected

    @rule()
    def success(self) -> None:
        if self.model_circuit() is Circuit.HALF_OPEN:
            self.reopens_at, self.consecutive, self.trial = None, 0, False
        self.state.record_success(self.now)

    @rule()
    def admit(self) -> None:
        circuit = self.model_circuit()
        expected = circuit is Circuit.CLOSED or (circuit is Circuit.HALF_OPEN and not self.trial)
        if expected and circuit is Circuit.HALF_OPEN:
            self.trial = True
        assert self.state.admit(self.now) is expected

    @rule()
    def release(self) -> None:
        self.trial = False
        self.state.release(self.now)

    @precondition(lambda self: self.reopens_at is not None)
    @rule()
    def recover(self) -> None:
        """Wait out the suspension; one successful trial always closes the breaker."""
        assert self.reopens_at is not None
        self.now = max(self.now, self.reopens_at)
        self.release()
        self.admit()
        self.success()
        assert self.state.circuit(self.now) is Circuit.CLOSED
        assert self.state.consecutive_trips == 0

    @precondition(lambda self: self.reopens_at is None)
    @rule()
    def burst(self) -> None:
        """From closed with no failure in the window, the N-th failure trips it, not before."""
        self.now += self.config.window + 1
        tripped = []
        for _ in range(self.config.failures):
            tripped.append(self.state.record_failure(self.now))
            self.model_count("failure", self.config.failures)
        assert tripped[-1] is True
        assert not any(tripped[:-1])

    # What must always hold.

    @invariant()
    def agrees_with_the_model(self) -> None:
        if not hasattr(self, "state"):
            return
        assert self.state.circuit(self.now) is self.model_circuit()
        assert self.state.reopens_at == self.reopens_at
        assert self.state.trips == len(self.trip_times)
        assert self.state.consecutive_trips == self.consecutive
        assert self.state.log_level(self.now) == self.model_level()

    @invariant()
    def never_allows_while_open(self) -> None:
        if hasattr(self, "state") and self.reopens_at is not None and self.now < self.reopens_at:
            assert not self.state.allows(self.now)

    @invariant()
    def suspensions_stay_under_the_cap(self) -> None:
        if hasattr(self, "state") and self.reopens_at is not None:
            assert self.reopens_at - self.trip_times[-1] <= self.config.reset_cap


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
