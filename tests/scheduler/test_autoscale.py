"""The autoscaler's arithmetic (CEP "Autoscaler"): no I/O, time is the samples' ``at``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celeriac.scheduler.autoscale import Autoscaler, Recommendation, Sample


def sample(
    at: float,
    *,
    ready: int = 0,
    delayed: int = 0,
    in_flight: int = 0,
    suspended: int = 0,
    upcoming: int = 0,
    workers: int = 1,
    capacity: int = 0,
) -> Sample:
    return Sample(
        at=at,
        ready=ready,
        delayed=delayed,
        in_flight=in_flight,
        suspended=suspended,
        upcoming=upcoming,
        workers=workers,
        capacity=capacity,
    )


def test_demand_above_capacity_scales_up_to_cover_it() -> None:
    advice = Autoscaler(per_worker=4).observe(sample(0.0, ready=13, workers=3, capacity=12))
    assert advice.direction == "up"
    assert advice.demand == 13
    assert advice.capacity == 12
    assert advice.workers == 4  # ceil(13 / 4)
    assert advice.concurrency == 13  # min(13, 4 * 4)
    assert "exceeds capacity 12" in advice.reason


def test_demand_counts_in_flight_and_upcoming_ticks_but_not_delayed() -> None:
    advice = Autoscaler(per_worker=1).observe(
        sample(0.0, ready=2, in_flight=3, upcoming=4, delayed=100, workers=9, capacity=9)
    )
    assert advice.demand == 9
    assert advice.direction == "hold"


def test_messages_of_suspended_tasks_are_not_demand() -> None:
    scaler = Autoscaler(per_worker=2)
    advice = scaler.observe(sample(0.0, ready=50, suspended=48, workers=1, capacity=2))
    assert advice.demand == 2
    assert advice.direction == "hold"
    # More suspended than ready (counted at different moments) is no demand, not negative.
    assert scaler.observe(sample(1.0, ready=1, suspended=5, workers=1)).demand == 0


def test_per_worker_defaults_to_the_average_concurrency_of_live_workers() -> None:
    advice = Autoscaler().observe(sample(0.0, ready=25, workers=2, capacity=20))
    assert advice.workers == 3  # 10 per worker
    assert advice.concurrency == 25


def test_without_known_capacity_each_worker_counts_as_one() -> None:
    advice = Autoscaler().observe(sample(0.0, ready=3, workers=2, capacity=0))
    assert advice.capacity == 2
    assert (advice.direction, advice.workers) == ("up", 3)


def test_no_workers_and_some_demand_scales_up() -> None:
    advice = Autoscaler(min_workers=0, per_worker=8).observe(sample(0.0, ready=1, workers=0))
    assert (advice.direction, advice.workers, advice.concurrency) == ("up", 1, 1)


def test_up_is_clamped_to_max_workers() -> None:
    advice = Autoscaler(max_workers=5, per_worker=2).observe(
        sample(0.0, ready=100, workers=2, capacity=4)
    )
    assert (advice.direction, advice.workers, advice.concurrency) == ("up", 5, 10)


def test_up_already_at_max_workers_is_a_hold_that_says_so() -> None:
    scaler = Autoscaler(max_workers=2, per_worker=2)
    advice = scaler.observe(sample(0.0, ready=100, workers=2, capacity=4))
    assert (advice.direction, advice.workers) == ("hold", 2)
    assert "max_workers is 2" in advice.reason
    assert advice.cooldown_until == 0.0  # not an event: no cooldown started


def test_low_demand_scales_down_to_what_it_needs() -> None:
    advice = Autoscaler(per_worker=4).observe(sample(0.0, ready=5, workers=6, capacity=24))
    assert (advice.direction, advice.workers, advice.concurrency) == ("down", 2, 5)
    assert "below 50% of capacity 24" in advice.reason


def test_down_never_goes_below_min_workers() -> None:
    advice = Autoscaler(min_workers=3, per_worker=4).observe(sample(0.0, workers=6, capacity=24))
    assert (advice.direction, advice.workers, advice.concurrency) == ("down", 3, 0)


def test_low_demand_at_min_workers_holds() -> None:
    advice = Autoscaler(min_workers=2).observe(sample(0.0, workers=2, capacity=8))
    assert (advice.direction, advice.workers) == ("hold", 2)
    assert "min_workers is 2" in advice.reason


def test_demand_between_low_water_and_capacity_holds() -> None:
    advice = Autoscaler(per_worker=4, low_water=0.5).observe(
        sample(0.0, ready=6, workers=3, capacity=12)
    )
    assert (advice.direction, advice.workers, advice.concurrency) == ("hold", 3, 6)
    assert "fits capacity 12" in advice.reason


def test_fewer_workers_than_the_minimum_scales_up_to_it() -> None:
    advice = Autoscaler(min_workers=2).observe(sample(0.0, workers=0))
    assert (advice.direction, advice.workers) == ("up", 2)


def test_more_workers_than_the_maximum_scales_down_to_it() -> None:
    advice = Autoscaler(max_workers=3, per_worker=1).observe(
        sample(0.0, ready=50, workers=5, capacity=5)
    )
    assert (advice.direction, advice.workers) == ("down", 3)


def events(scaler: Autoscaler, at: float, **counts: Any) -> Recommendation:
    return scaler.observe(sample(at, **counts))


def test_cooldown_doubles_after_each_event_up_to_the_maximum() -> None:
    scaler = Autoscaler(per_worker=1, cooldown=5.0, max_cooldown=30.0, factor=2.0)
    at, gaps = 0.0, []
    for _ in range(6):
        # Alternate a backlog and an idle queue, each observed the moment it may act.
        advice = events(scaler, at, ready=10, workers=1, capacity=1)
        assert advice.direction == "up"
        gaps.append(advice.cooldown_until - at)
        at = advice.cooldown_until
        advice = events(scaler, at, workers=10, capacity=10)
        assert advice.direction == "down"
        gaps.append(advice.cooldown_until - at)
        at = advice.cooldown_until
    assert gaps == [5.0, 10.0, 20.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0]


def test_during_a_cooldown_it_holds_and_says_what_it_would_have_done() -> None:
    scaler = Autoscaler(per_worker=1, cooldown=5.0)
    assert events(scaler, 0.0, ready=10, workers=1, capacity=1).direction == "up"
    advice = events(scaler, 3.0, ready=40, workers=10, capacity=10)
    assert (advice.direction, advice.workers) == ("hold", 10)
    assert advice.cooldown_until == 5.0
    assert "cooling down until 5" in advice.reason
    assert "would have scaled up to 40 workers" in advice.reason
    # At the end of the cooldown it acts, and the next cooldown is twice as long.
    advice = events(scaler, 5.0, ready=40, workers=10, capacity=10)
    assert (advice.direction, advice.workers, advice.cooldown_until) == ("up", 40, 15.0)


def test_cooldown_hold_keeps_desired_workers_within_bounds() -> None:
    scaler = Autoscaler(min_workers=2, max_workers=4, per_worker=1)
    assert events(scaler, 0.0, workers=0).direction == "up"
    advice = events(scaler, 1.0, workers=0)
    assert (advice.direction, advice.workers) == ("hold", 2)


def test_a_hold_does_not_lengthen_the_cooldown() -> None:
    scaler = Autoscaler(per_worker=1, cooldown=5.0)
    events(scaler, 0.0, ready=10, workers=1, capacity=1)
    for at in (5.0, 6.0, 7.0):
        assert events(scaler, at, ready=10, workers=10, capacity=10).direction == "hold"
    assert events(scaler, 8.0, workers=10, capacity=10).cooldown_until == 18.0  # 8 + 10


def test_cooldown_starts_over_after_a_quiet_max_cooldown() -> None:
    scaler = Autoscaler(per_worker=1, cooldown=5.0, max_cooldown=60.0)
    events(scaler, 0.0, ready=10, workers=1, capacity=1)  # cooldown 5, until 5
    events(scaler, 5.0, workers=10, capacity=10)  # cooldown 10, until 15
    # 15 + 60 = 75: one moment short of a quiet max_cooldown, the cooldown keeps growing.
    advice = events(scaler, 74.5, ready=10, workers=1, capacity=1)
    assert advice.cooldown_until == 94.5  # 74.5 + 20
    # A whole max_cooldown after that cooldown ended (94.5 + 60), it starts over.
    advice = events(scaler, 154.5, workers=10, capacity=10)
    assert advice.cooldown_until == 159.5  # 154.5 + 5


def test_zero_cooldown_acts_on_every_sample() -> None:
    scaler = Autoscaler(per_worker=1, cooldown=0.0, max_cooldown=0.0)
    assert events(scaler, 0.0, ready=10, workers=1, capacity=1).direction == "up"
    assert events(scaler, 0.0, workers=10, capacity=10).direction == "down"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_workers": -1}, "min_workers"),
        ({"min_workers": 3, "max_workers": 2}, "max_workers"),
        ({"min_workers": 0, "max_workers": 0}, "max_workers"),
        ({"per_worker": 0}, "per_worker"),
        ({"cooldown": -1.0}, "cooldown"),
        ({"cooldown": 10.0, "max_cooldown": 5.0}, "max_cooldown"),
        ({"cooldown": float("nan")}, "cooldown"),
        ({"factor": 0.5}, "factor"),
        ({"low_water": 1.5}, "low_water"),
        ({"low_water": -0.1}, "low_water"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Autoscaler(**kwargs)


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        Autoscaler().observe(sample(0.0, ready=-1))


counts = st.integers(min_value=0, max_value=200)
samples = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=100.0),  # time since the previous sample
        counts,  # ready
        counts,  # suspended
        counts,  # in flight
        counts,  # upcoming
        st.integers(min_value=0, max_value=30),  # workers
        st.integers(min_value=0, max_value=5),  # capacity per worker (0: unknown)
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    samples=samples,
    min_workers=st.integers(min_value=0, max_value=5),
    extra=st.none() | st.integers(min_value=0, max_value=20),
    per_worker=st.none() | st.integers(min_value=1, max_value=5),
)
def test_events_are_spaced_by_growing_cooldowns_and_advice_stays_in_bounds(
    samples: list[tuple[float, int, int, int, int, int, int]],
    min_workers: int,
    extra: int | None,
    per_worker: int | None,
) -> None:
    max_workers = None if extra is None else max(min_workers, 1) + extra
    scaler = Autoscaler(
        min_workers=min_workers,
        max_workers=max_workers,
        per_worker=per_worker,
        cooldown=5.0,
        max_cooldown=120.0,
    )
    at, until, last = 0.0, None, None  # last: the previous event's cooldown
    for step, ready, suspended, in_flight, upcoming, workers, each in samples:
        at += step
        advice = scaler.observe(
            Sample(at, ready, 0, in_flight, suspended, upcoming, workers, workers * each)
        )
        assert advice.workers >= min_workers
        assert max_workers is None or advice.workers <= max_workers
        assert 0 <= advice.concurrency <= advice.demand
        assert advice.cooldown_until >= at
        if advice.direction == "hold":
            continue
        assert until is None or at >= until  # no event inside a cooldown
        cooldown = advice.cooldown_until - at
        if until is None or at >= until + 120.0:
            assert cooldown == pytest.approx(5.0)  # the first event, or after a quiet max_cooldown
        else:
            assert last is not None
            # Grows (or stays at the cap) until a reset.
            assert cooldown == pytest.approx(min(last * 2.0, 120.0))
            assert cooldown >= last * (1 - 1e-9)
        until, last = advice.cooldown_until, cooldown
