"""Local evaluation: what every primitive means, and the normal form means the same."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from tests.canvas.strategies import TASKS, canvases

from celeriac import App, UnknownTask
from celeriac.canvas import (
    Canvas,
    Done,
    Failed,
    GroupFailed,
    GroupFailure,
    LocalRun,
    Map,
    Signature,
    Skipped,
    TaskFailure,
    chain,
    chord,
    group,
    run_graph,
    run_local,
    step_task_id,
    to_graph,
)
from celeriac.canvas.outcomes import failure_of, without_tracebacks

add = Signature("t.add")
echo = Signature("t.echo")
fail = Signature("t.fail")
record = Signature("t.record")


def both(canvas: Canvas) -> LocalRun:
    """Run ``canvas`` by both evaluators, check they agree, return the walk's run."""
    walked = run_local(canvas, TASKS, workflow_id="w")
    stepped = run_graph(to_graph(canvas, workflow_id="w"), TASKS)
    assert _summary(stepped) == _summary(walked)
    return walked


def test_api_examples() -> None:
    app = App("shop", broker="memory://")

    @app.task(name="add")
    def add_(a: int, b: int) -> int:
        return a + b

    @app.task(name="mul")
    def mul(a: int, b: int) -> int:
        return a * b

    @app.task(name="tsum")
    def tsum(numbers: list[int]) -> int:
        return sum(numbers)

    functions = {name: task.fn for name, task in app.tasks.items()}

    def run(canvas: Canvas) -> Any:
        value = run_local(canvas, functions).get()
        assert run_graph(to_graph(canvas), functions).get() == value
        return value

    assert run(chain(add_.s(1, 2), mul.s(10))) == 30
    assert run(group(add_.s(i, i) for i in range(10))) == [2 * i for i in range(10)]
    assert run(chord(group(add_.s(i, i) for i in range(10)), tsum.s())) == 90
    assert run(tsum.map([[1, 2], [3, 4]])) == [3, 7]
    assert run(add_.starmap([(1, 2), (3, 4)])) == [3, 7]
    pairs = [(i, i) for i in range(5)]
    assert run(add_.chunks(pairs, 2)) == [[0, 2], [4, 6], [8]]
    assert run(add_.s(4, 4) | add_.s(8) | add_.s(16)) == 32
    assert run(add_.s(4, 4) | add_.si(1, 2)) == 3


def test_a_chain_feeds_each_result_to_the_next_step_first() -> None:
    run = both(chain(echo, Signature("t.echo", args=(1,)), Signature("t.echo", args=(2,))))
    assert run.get() == [[[], 1], 2]
    assert [call.step for call in run.calls] == [0, 1, 2]


def test_an_immutable_step_ignores_the_previous_result() -> None:
    assert both(chain(Signature("t.echo", args=(1,)), echo.frozen())).get() == []


def test_a_group_returns_results_in_member_order() -> None:
    members = [Signature("t.echo", args=(i,)) for i in range(5)]
    assert both(group(members)).get() == [[0], [1], [2], [3], [4]]


def test_a_group_in_a_chain_gives_every_member_the_previous_result() -> None:
    canvas = chain(Signature("t.add", args=(1,)), group(echo, echo.frozen()), echo)
    assert both(canvas).get() == [[[1], []]]


def test_a_chord_calls_its_body_once_with_the_header_results() -> None:
    run = both(chord([Signature("t.add", args=(i,)) for i in range(3)], echo))
    assert run.get() == [[0, 1, 2]]
    assert [call.call.task for call in run.calls].count("t.echo") == 1


def test_empty_groups_give_empty_lists() -> None:
    assert both(group()).get() == []
    assert both(chord([], echo)).get() == [[]]
    assert both(chain(Signature("t.add", args=(1,)), group(), echo)).get() == [[]]


def test_map_starmap_and_chunks_shapes() -> None:
    assert both(Map("t.echo", items=(1, 2))).get() == [[1], [2]]
    canvas = chain(Signature("t.add", args=(5,)), Map("t.echo", items=(1, 2)))
    assert both(canvas).get() == [[5, 1], [5, 2]]
    pairs = ((1, 2), (3, 4), (5, 6))
    from celeriac.canvas import Chunks, Starmap

    assert both(Starmap("t.echo", items=pairs)).get() == [[1, 2], [3, 4], [5, 6]]
    assert both(Chunks("t.add", items=pairs, size=2)).get() == [[3, 7], [11]]
    assert both(Chunks("t.add", items=(), size=2)).get() == []


def test_nesting_a_chain_of_groups_and_a_group_of_chains() -> None:
    canvas = group(
        chain(Signature("t.add", args=(1,)), Signature("t.add", args=(2,))),
        chain(group(Signature("t.add", args=(1,)), Signature("t.add", args=(2,))), add),
        chord(Map("t.add", items=(1, 2, 3)), chain(add, Signature("t.echo", args=(0,)))),
    )
    assert both(canvas).get() == [3, 3, [6, 0]]


def test_a_failed_step_stops_its_chain_and_calls_its_errbacks_once() -> None:
    canvas = chain(
        Signature("t.add", args=(1,)), Signature("t.fail", args=(2,)).on_error(record), add
    ).on_error(record.set(queue="other"))
    run = both(canvas)
    assert [call.call.task for call in run.calls] == ["t.add", "t.fail"]  # add never ran
    failed_id = step_task_id("w", 1)
    assert [(e.errback.task, e.task_id) for e in run.errbacks] == [
        ("t.record", failed_id),
        ("t.record", failed_id),
    ]
    task_id, error = run.errbacks[0].call.args
    assert task_id == failed_id
    assert error["type"] == "ValueError"
    assert error["message"] == "fail: 3"
    with pytest.raises(ValueError, match="fail: 3"):
        run.get()
    failure = run.failure
    assert isinstance(failure, TaskFailure)
    assert failure.step == 1


def test_the_same_errback_on_several_levels_is_called_once() -> None:
    canvas = chain(fail.on_error(record), add).on_error(record)
    assert len(both(canvas).errbacks) == 1


def test_an_immutable_errback_gets_only_its_own_arguments() -> None:
    run = both(fail.on_error(Signature("t.record", args=("x",), immutable=True)))
    assert run.errbacks[0].call.args == ("x",)


def test_an_errback_that_fails_changes_nothing_else() -> None:
    run = both(chain(fail.on_error(fail), add))
    assert run.errbacks[0].error is not None
    assert isinstance(run.failure, TaskFailure)
    assert run.failure.step == 0


def test_a_group_reports_which_members_failed() -> None:
    canvas = group(add, fail, Signature("t.odd", args=(1,)), Signature("t.odd", args=(2,)))
    run = both(canvas)
    assert len(run.calls) == 4  # every member ran
    with pytest.raises(GroupFailed, match=r"2 of 4 members failed: \[1, 2\]") as caught:
        run.get()
    failure = caught.value.failure
    assert [m.index for m in failure.failures] == [1, 2]
    assert all(isinstance(m.failure, TaskFailure) for m in failure.failures)


def test_a_member_chain_that_fails_reports_its_failed_task() -> None:
    run = both(group(add, chain(Signature("t.fail", args=(7,)), add)))
    failure = run.failure
    assert isinstance(failure, GroupFailure)
    (member,) = failure.failures
    assert member.index == 1
    assert isinstance(member.failure, TaskFailure)
    assert member.failure.step == 1


def test_a_chord_whose_header_fails_does_not_run_its_body() -> None:
    run = both(chord([add, fail], echo))
    assert "t.echo" not in [call.call.task for call in run.calls]
    assert isinstance(run.failure, GroupFailure)
    stepped = run_graph(to_graph(chord([add, fail], echo), workflow_id="w"), TASKS)
    assert isinstance(stepped.outcome, Skipped)
    assert stepped.status is not None
    assert stepped.status.state == "failed"
    assert stepped.status.counts() == {"done": 1, "failed": 2, "skipped": 1}


def test_a_group_after_a_failed_step_fails_with_that_step_not_as_a_group() -> None:
    run = both(chain(fail, group(add, add)))
    assert isinstance(run.failure, TaskFailure)
    assert run.failure.step == 0


def test_an_unknown_task_fails_its_step_like_on_a_worker() -> None:
    run = both(chain(Signature("t.nope"), add))
    with pytest.raises(UnknownTask):
        run.get()


def test_the_graph_run_reports_every_steps_state() -> None:
    graph = to_graph(chain(add, group(fail, add), add), workflow_id="w")
    run = run_graph(graph, TASKS)
    assert run.status is not None
    assert run.status.states == ("done", "failed", "done", "skipped", "failed")
    assert run.status.finished


@settings(max_examples=300, deadline=None)
@given(canvases)
def test_the_normal_form_means_what_the_canvas_means(canvas: Canvas) -> None:
    walked = run_local(canvas, TASKS, workflow_id="w")
    graph = to_graph(canvas, workflow_id="w")
    stepped = run_graph(graph, TASKS)
    assert _summary(stepped) == _summary(walked)
    assert stepped.status is not None
    ran = {call.step for call in stepped.calls}
    for step, state in enumerate(stepped.status.states):
        if not graph.steps[step].is_join:
            assert (state in ("done", "failed")) == (step in ran)


def _summary(run: LocalRun) -> tuple[Any, ...]:
    outcome = run.outcome
    failure = failure_of(outcome)
    result: Any = outcome.value if isinstance(outcome, Done) else without_tracebacks(failure)  # type: ignore[arg-type]
    calls = sorted(
        ((c.step, c.task_id, c.call, _plain(c.outcome)) for c in run.calls), key=lambda c: c[0]
    )
    errbacks = sorted(
        (e.task_id, msgspec.json.encode(e.errback), _no_traceback(e.call.args), e.error is None)
        for e in run.errbacks
    )
    return result, calls, errbacks


def _plain(outcome: Done | Failed) -> Any:
    if isinstance(outcome, Done):
        return outcome
    return Failed(without_tracebacks(outcome.failure))


def _no_traceback(args: tuple[Any, ...]) -> bytes:
    plain = [dict(arg, traceback="") if isinstance(arg, dict) else arg for arg in args]
    return msgspec.json.encode(plain)


def test_a_large_group_names_its_failed_members_across_the_join_tree() -> None:
    members = [Signature("t.odd", args=(2 * i + (i in (70, 150, 4100)),)) for i in range(4200)]
    run = both(group(members))
    assert isinstance(run.failure, GroupFailure)
    assert run.failure.size == 4200
    assert [m.index for m in run.failure.failures] == [70, 150, 4100]
