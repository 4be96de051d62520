"""The fetch strategies: queue preference and resource saturation, as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celeriac.scheduler.priorities import Fetch, KindLoad, QueueOrder, ResourceSaturation

KINDS = {
    "cpu": frozenset({"process"}),
    "io": frozenset({"coroutine"}),
    "mixed": frozenset({"process", "thread"}),
}
IDLE = {"process": KindLoad(0, 0, 2), "coroutine": KindLoad(0, 0, 100), "thread": KindLoad(0, 0, 4)}


def test_queue_order_keeps_the_workers_order() -> None:
    assert QueueOrder().plan(["b", "a"], KINDS, IDLE) == [Fetch(["b", "a"], None)]


def test_nothing_saturated_keeps_the_order_and_caps_each_queue_by_what_its_kinds_want() -> None:
    plan = ResourceSaturation().plan(["cpu", "io", "mixed"], KINDS, IDLE)
    # process wants 2 free + 2 buffered, thread 4 + 4, coroutine 100 + 100
    assert plan == [
        Fetch(["cpu", "io", "mixed"], 4),  # waits on every queue, for no more than cpu wants
        Fetch(["io", "mixed"], 4 + 8),  # then, if that came back full, more for the others
        Fetch(["io"], 200),
    ]


def test_a_full_cpu_budget_leaves_cpu_queues_in_the_broker() -> None:
    load = {**IDLE, "process": KindLoad(queued=2, running=2, maximum=2)}
    plan = ResourceSaturation().plan(["cpu", "mixed", "io"], KINDS, load)
    assert plan[0].queues == ["io", "mixed"]  # free first, then the partly saturated one


def test_and_vice_versa_a_full_io_budget_prefers_cpu_queues() -> None:
    load = {**IDLE, "coroutine": KindLoad(queued=100, running=100, maximum=100)}
    plan = ResourceSaturation().plan(["io", "cpu"], KINDS, load)
    assert plan == [Fetch(["cpu"], 4)]


def test_only_saturated_kinds_fetch_nothing() -> None:
    load = {**IDLE, "process": KindLoad(5, 2, 2)}
    assert ResourceSaturation().plan(["cpu"], KINDS, load) == []


def test_queues_of_unknown_kinds_are_never_held_back_nor_capped() -> None:
    load = {**IDLE, "process": KindLoad(5, 2, 2)}
    assert ResourceSaturation().plan(["cpu", "elsewhere"], KINDS, load) == [
        Fetch(["elsewhere"], None)
    ]


def test_headroom_buffers_more_rounds() -> None:
    load = {**IDLE, "process": KindLoad(queued=2, running=2, maximum=2)}
    assert ResourceSaturation(headroom=2).plan(["cpu"], KINDS, load) == [Fetch(["cpu"], 2)]
    with pytest.raises(ValueError, match="headroom"):
        ResourceSaturation(headroom=0)


loads = st.builds(KindLoad, st.integers(0, 50), st.integers(0, 20), st.integers(0, 20))


@given(
    st.permutations(["cpu", "io", "mixed", "other"]),
    st.fixed_dictionaries({"process": loads, "coroutine": loads, "thread": loads}),
)
def test_a_plan_is_a_subsequence_of_the_workers_queues_with_free_ones_first(
    queues: list[str], load: dict[str, KindLoad]
) -> None:
    strategy = ResourceSaturation()
    steps = strategy.plan(queues, KINDS, load)
    full = {kind for kind, kl in load.items() if strategy.wants(kl) == 0}
    chosen = steps[0].queues if steps else []
    for queue in queues:
        fed = KINDS.get(queue, frozenset())
        if fed and fed <= full:
            assert queue not in chosen  # nothing it feeds has room
        else:
            assert queue in chosen
    busy = [bool(KINDS.get(q, frozenset()) & full) for q in chosen]
    assert busy == sorted(busy)  # free queues, then partly saturated ones
    for group in (False, True):  # each group keeps the worker's order
        kept = [q for q, b in zip(chosen, busy, strict=True) if b is group]
        assert kept == [q for q in queues if q in kept]

    def want(queue: str) -> float:
        fed = KINDS.get(queue)
        return sum(strategy.wants(load[k]) for k in fed) if fed else float("inf")

    for step, after in zip(steps, [*steps[1:], None], strict=True):
        # No queue is ever asked for more than its kinds want; each step narrows the last.
        assert all(want(q) >= (step.limit or float("inf")) for q in step.queues)
        assert step.queues == [q for q in chosen if q in step.queues]
        if after is not None:
            assert set(after.queues) < set(step.queues)
            assert step.limit is not None
            assert after.limit is None or after.limit > step.limit
