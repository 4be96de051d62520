"""The normal form: every canvas becomes a DAG of small, flat step records."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from tests.canvas.strategies import canvases

from celeriac.canvas import (
    FAN_IN,
    Canvas,
    Graph,
    InvalidCanvas,
    Map,
    Signature,
    StepRecord,
    WorkflowRecord,
    chain,
    chord,
    group,
    step_task_id,
    to_graph,
)
from celeriac.canvas.primitives import Chunks, task_count
from celeriac.canvas.signature import identity

# A step record is small whatever the canvas around it: its own call, at most
# FAN_IN input ids, a few error callback indices, and a handful of fields.
RECORD_BOUND = 1024


def size(record: StepRecord) -> int:
    return len(msgspec.json.encode(record))


@given(canvases)
def test_every_canvas_becomes_a_well_formed_dag(canvas: Canvas) -> None:
    graph = to_graph(canvas, workflow_id="w")
    graph.check()  # dense ids, inputs exist, fitting combines, no cycle
    tasks = [step for step in graph.steps if not step.is_join]
    assert len(tasks) == task_count(canvas) == graph.workflow.tasks
    assert all(not step.is_join for step in graph.steps[: len(tasks)])  # tasks first
    assert list(graph.roots()), "a canvas starts somewhere"
    assert {identity(e) for e in graph.errbacks} == {identity(e) for e in _all_errbacks(canvas)}


@given(canvases)
def test_no_record_embeds_another(canvas: Canvas) -> None:
    graph = to_graph(canvas, workflow_id="w")
    for step in graph.steps:
        own = len(msgspec.json.encode([step.args, step.kwargs, step.options]))
        assert size(step) - own <= 200 + 8 * len(step.inputs) + 4 * len(step.errbacks)
        assert len(step.inputs) <= FAN_IN or not step.is_join
        assert len(step.errbacks) <= len(graph.errbacks)


@given(canvases)
def test_a_graph_survives_a_json_round_trip(canvas: Canvas) -> None:
    graph = to_graph(canvas, workflow_id="w")
    assert msgspec.json.decode(msgspec.json.encode(graph), type=Graph) == graph


def test_a_chain_with_a_group_in_it() -> None:
    a, b, c, d = (Signature(name) for name in "abcd")
    e = Signature("e")
    graph = to_graph(chain(a, group(b, c.on_error(e)), d.frozen()), workflow_id="w")
    assert graph.steps == (
        StepRecord(0, task="a"),
        StepRecord(1, task="b", inputs=(0,), combine="prepend"),
        StepRecord(2, task="c", inputs=(0,), combine="prepend", errbacks=(0,)),
        StepRecord(3, task="d", inputs=(4,)),  # immutable: waits, takes no result
        StepRecord(4, inputs=(1, 2), combine="list", after=0),  # the group's join
    )
    assert graph.workflow == WorkflowRecord(id="w", final=3, size=5, tasks=4, errbacks=1)
    assert graph.errbacks == (e,)
    assert [step.id for step in graph.roots()] == [0]
    assert graph.dependents() == [[1, 2, 4], [4], [4], [], [3]]


def test_a_chord_body_waits_for_the_header_join() -> None:
    graph = to_graph(chord(Map("x", items=(1, 2)), Signature("sum")), workflow_id="w")
    assert graph.steps == (
        StepRecord(0, task="x", args=(1,)),
        StepRecord(1, task="x", args=(2,)),
        StepRecord(2, task="sum", inputs=(3,), combine="prepend"),
        StepRecord(3, inputs=(0, 1), combine="list"),
    )
    assert graph.final.id == 2


def test_an_empty_group_is_a_join_with_no_inputs() -> None:
    graph = to_graph(chain(Signature("a"), group(), Signature("b")), workflow_id="w")
    assert graph.steps[2] == StepRecord(2, inputs=(), combine="list", after=0)
    assert graph.steps[1] == StepRecord(1, task="b", inputs=(2,), combine="prepend")


def test_chunks_are_one_step_per_chunk() -> None:
    graph = to_graph(Chunks("add", items=((1, 2), (3, 4), (5, 6)), size=2), workflow_id="w")
    assert graph.steps[:2] == (
        StepRecord(0, task="add", args=([1, 2], [3, 4]), apply="starmap"),
        StepRecord(1, task="add", args=([5, 6],), apply="starmap"),
    )


@pytest.mark.parametrize(
    "canvas",
    [
        group(Signature("a", args=(i,)) for i in range(100_000)),
        Map("a", items=tuple(range(100_000))),
        chord(Map("a", items=tuple(range(100_000))), Signature("sum")),
        chain(Signature("first"), Map("a", items=tuple(range(100_000))), Signature("sum")),
        Chunks("a", items=tuple((i, i) for i in range(1_000_000)), size=10),
    ],
    ids=["group", "map", "chord", "chain", "chunks"],
)
def test_a_hundred_thousand_members_make_a_hundred_thousand_small_records(
    canvas: Canvas,
) -> None:
    errback = Signature("cleanup", args=("x" * 100,))
    graph = to_graph(canvas.on_error(errback), workflow_id="w")
    graph.check()
    assert graph.workflow.tasks == task_count(canvas) >= 100_000
    joins = [step for step in graph.steps if step.is_join]
    assert len(joins) < graph.workflow.tasks / (FAN_IN - 1) + 3
    assert max(size(step) for step in graph.steps) < RECORD_BOUND
    assert graph.errbacks == (errback,)  # stored once, referenced by index
    assert len(msgspec.json.encode(graph.workflow)) < 200


def test_record_size_grows_only_with_the_digits_of_step_ids() -> None:
    for n in (10, 1_000, 100_000):
        graph = to_graph(Map("a", items=(0,) * n), workflow_id="w")
        digits = len(str(len(graph.steps)))
        # The largest record is a join: FAN_IN ids, each a few digits and a comma.
        assert max(size(step) for step in graph.steps) <= 100 + FAN_IN * (digits + 1)


def test_a_large_group_result_is_in_member_order_through_the_join_tree() -> None:
    from celeriac.canvas import run_graph

    n = FAN_IN**2 + 5  # three levels of joins
    graph = to_graph(Map("ident", items=tuple(range(n))), workflow_id="w")
    assert run_graph(graph, {"ident": lambda x: x}).get() == list(range(n))


def test_check_finds_malformed_graphs() -> None:
    record = WorkflowRecord(id="w", final=1, size=2, tasks=2)
    cycle = Graph(
        record,
        (
            StepRecord(0, task="a", inputs=(1,), combine="prepend"),
            StepRecord(1, task="b", inputs=(0,), combine="prepend"),
        ),
    )
    with pytest.raises(InvalidCanvas, match="cycle through steps 0 -> 1 -> 0"):
        cycle.check()
    dangling = Graph(
        record,
        (
            StepRecord(0, task="a"),
            StepRecord(1, task="b", inputs=(0, 7), combine="prepend"),
        ),
    )
    with pytest.raises(InvalidCanvas) as caught:
        dangling.check()
    assert "waits for step 7" in str(caught.value)
    assert "prepends 2 inputs" in str(caught.value)


def test_task_ids_are_derived_from_the_workflow_and_step() -> None:
    first = step_task_id("w", 0)
    assert len(first) == 32
    assert int(first, 16) >= 0
    assert first == step_task_id("w", 0)
    assert len({first, step_task_id("w", 1), step_task_id("v", 0)}) == 3
    graph = to_graph(Signature("a"), workflow_id="w")
    assert graph.task_id(0) == first


def test_equal_error_callbacks_are_stored_once() -> None:
    e = Signature("e", kwargs={"a": 1, "b": 2})
    same = Signature("e", kwargs={"b": 2, "a": 1})
    graph = to_graph(group(Signature("x").on_error(e), Signature("y").on_error(same)))
    assert graph.errbacks == (e,)
    assert graph.steps[0].errbacks == graph.steps[1].errbacks == (0,)


def test_a_step_calls_its_own_error_callbacks_first_then_the_outer_ones() -> None:
    inner, outer = Signature("inner"), Signature("outer")
    graph = to_graph(chain(Signature("a").on_error(inner), Signature("b")).on_error(outer))
    assert [graph.errbacks[i] for i in graph.steps[0].errbacks] == [inner, outer]
    assert [graph.errbacks[i] for i in graph.steps[1].errbacks] == [outer]


def _all_errbacks(canvas: Canvas) -> list[Signature]:
    found = list(canvas.errbacks)
    for child in _children(canvas):
        found += _all_errbacks(child)
    return found


def _children(canvas: Canvas) -> list[Canvas]:
    tasks = getattr(canvas, "tasks", None)
    if isinstance(tasks, tuple):
        return list(tasks)
    if hasattr(canvas, "header"):
        return [canvas.header, canvas.body]  # type: ignore[union-attr]
    return []
