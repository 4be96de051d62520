"""The concurrency budget algorithm (CEP "Concurrency Budget"), with no I/O or clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celeriac.worker.budget import Budget


def test_grows_by_the_backlog_first() -> None:
    budget = Budget(1, 100, cooldown=1.0)
    assert budget.update(queued=10, running=1, now=0.0) == 11


def test_cooldown_holds_the_limit() -> None:
    budget = Budget(1, 100, cooldown=1.0)
    budget.update(queued=10, running=1, now=0.0)
    assert budget.update(queued=50, running=11, now=0.5) == 11


def test_grows_exponentially_after_the_cooldown() -> None:
    budget = Budget(1, 1000, cooldown=1.0, exponent=2.0)
    assert budget.update(queued=10, running=1, now=0.0) == 11
    assert budget.update(queued=50, running=11, now=1.0) == 22  # 11 * 2**1
    assert budget.update(queued=50, running=22, now=2.0) == 88  # 22 * 2**2


def test_never_exceeds_the_maximum() -> None:
    budget = Budget(1, 16, cooldown=0.0)
    assert budget.update(queued=1000, running=1, now=0.0) == 16
    assert budget.update(queued=1000, running=16, now=1.0) == 16


def test_shrinks_to_what_runs_when_the_queue_empties() -> None:
    budget = Budget(2, 100, cooldown=0.0)
    budget.update(queued=40, running=2, now=0.0)
    assert budget.update(queued=0, running=5, now=1.0) == 5
    assert budget.update(queued=0, running=0, now=2.0) == 2  # not below the minimum


def test_growth_starts_over_after_a_shrink() -> None:
    budget = Budget(1, 1000, cooldown=0.0, exponent=2.0)
    budget.update(queued=10, running=1, now=0.0)
    budget.update(queued=20, running=11, now=1.0)
    budget.update(queued=0, running=3, now=2.0)
    assert budget.update(queued=10, running=3, now=3.0) == 13  # by the backlog again


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Budget(5, 2)
    with pytest.raises(ValueError):
        Budget(1, 10, exponent=0.5)


@given(
    minimum=st.integers(0, 20),
    extra=st.integers(1, 200),
    loads=st.lists(
        st.tuples(st.integers(0, 5000), st.integers(0, 500), st.floats(0, 5)), max_size=50
    ),
)
def test_limit_always_stays_within_bounds(
    minimum: int, extra: int, loads: list[tuple[int, int, float]]
) -> None:
    maximum = minimum + extra
    budget = Budget(minimum, maximum, cooldown=0.5)
    now = 0.0
    for queued, running, step in loads:
        now += step
        limit = budget.update(queued, running, now)
        assert max(minimum, 1) <= limit <= maximum
        assert limit == budget.limit


def test_told_up_it_stands_at_its_maximum_until_told_otherwise() -> None:
    budget = Budget(2, 16)
    budget.follow("up")
    assert budget.limit == 16
    assert budget.update(queued=0, running=1, now=0.0) == 16  # no local backlog: still up
    budget.follow("hold")  # the recommendation moved on: its own algorithm again
    assert budget.update(queued=0, running=3, now=1.0) == 3


def test_told_down_it_shrinks_to_what_runs_at_once() -> None:
    budget = Budget(2, 16)
    budget.follow("up")
    budget.follow("down")
    assert budget.update(queued=5, running=7, now=0.0) == 7  # some queued, below the limit
    assert budget.update(queued=0, running=0, now=1.0) == 2  # and on to its minimum
