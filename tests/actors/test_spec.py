"""The I/O-free parts: lifecycle table, boot order, restart intensity, backoff."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.actors.actor_helpers import recorder

from celeriac.actors import Backoff, ChildSpec, State, boot_order
from celeriac.actors._spec import _Intensity
from celeriac.actors._state import can_transition
from celeriac.errors import ConfigurationError


def test_the_lifecycle_moves_forward_and_restarts_only_from_an_end() -> None:
    assert can_transition(State.INITIALIZING, State.STARTING)
    assert can_transition(State.STARTING, State.STARTED)
    assert can_transition(State.STARTED, State.STOPPING)
    assert can_transition(State.STOPPING, State.STOPPED)
    assert can_transition(State.STARTING, State.CRASHED)
    assert can_transition(State.CRASHED, State.STARTING)
    assert can_transition(State.STOPPED, State.STARTING)
    assert not can_transition(State.STARTED, State.STARTING)
    assert not can_transition(State.STOPPED, State.STARTED)
    assert not can_transition(State.INITIALIZING, State.STARTED)


@st.composite
def dependency_graphs(draw: st.DrawFn) -> list[ChildSpec]:
    """Acyclic graphs: each child may depend only on children declared before it."""
    count = draw(st.integers(min_value=0, max_value=8))
    names = [f"c{i}" for i in range(count)]
    specs = []
    for i, name in enumerate(names):
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        specs.append(ChildSpec(name, recorder([]), depends_on=tuple(deps)))
    return draw(st.permutations(specs))


@given(dependency_graphs())
def test_boot_order_puts_every_child_after_its_dependencies(specs: list[ChildSpec]) -> None:
    order = boot_order(specs)
    assert sorted(s.name for s in order) == sorted(s.name for s in specs)
    position = {spec.name: i for i, spec in enumerate(order)}
    for spec in specs:
        for dependency in spec.depends_on:
            assert position[dependency] < position[spec.name]


def test_boot_order_keeps_the_declared_order_of_independent_children() -> None:
    names = ["z", "y", "x", "w"]
    assert [s.name for s in boot_order([ChildSpec(n, recorder([])) for n in names])] == names


def test_a_child_name_must_be_one_path_segment() -> None:
    with pytest.raises(ConfigurationError):
        ChildSpec("a/b", recorder([]))
    with pytest.raises(ConfigurationError, match="tuple"):
        ChildSpec("a", recorder([]), depends_on="b")  # type: ignore[arg-type]


def test_intensity_allows_max_restarts_per_sliding_period() -> None:
    intensity = _Intensity(max_restarts=2, period=10.0)
    assert intensity.record(0.0) == 1
    assert intensity.record(1.0) == 2
    assert intensity.record(2.0) is None  # a third within 10 s
    fresh = _Intensity(max_restarts=2, period=10.0)
    assert fresh.record(0.0) == 1
    assert fresh.record(5.0) == 2
    assert fresh.record(10.5) == 2  # the first one left the window


def test_zero_max_restarts_gives_up_on_the_first_failure() -> None:
    assert _Intensity(max_restarts=0, period=5.0).record(0.0) is None


def test_backoff_grows_exponentially_up_to_its_maximum() -> None:
    backoff = Backoff(initial=0.1, maximum=0.5, factor=2.0)
    assert [backoff.delay(n) for n in range(6)] == [0.0, 0.1, 0.2, 0.4, 0.5, 0.5]
