"""Workflows: declared once, validated at build time, started many times."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from celeriac.canvas import (
    CanvasError,
    InvalidWorkflow,
    Signature,
    Step,
    Workflow,
    WorkflowRun,
    run_graph,
)

reserve = Signature("shop.reserve")
price = Signature("shop.price")
charge = Signature("shop.charge")
receipt = Signature("shop.receipt", immutable=True)

FUNCTIONS: dict[str, Any] = {
    "shop.reserve": lambda order_id: f"reserved {order_id}",
    "shop.price": lambda order_id: 100 * order_id,
    "shop.charge": lambda parts: {"charged": parts},
    "shop.receipt": lambda to: f"mail to {to}",
    "shop.refund": lambda task_id, error: None,
}


def checkout() -> Workflow:
    return Workflow(
        "shop.checkout",
        params=("order_id", "email"),
        steps=(
            Step("reserve", reserve, bind={"order_id": "order_id"}),
            Step("price", price, bind={"order_id": "order_id"}),
            Step("charge", charge, after=("reserve", "price")),
            Step("receipt", receipt, after=("charge",), bind={"to": "email"}),
        ),
        output="charge",
    )


def problems(**fields: Any) -> str:
    with pytest.raises(InvalidWorkflow) as caught:
        Workflow(**{"name": "w", "steps": (Step("a", reserve),), **fields})
    return str(caught.value)


def test_a_workflow_starts_many_times_with_different_parameters() -> None:
    workflow = checkout()
    first = workflow.instantiate({"order_id": 1, "email": "a@b.c"}, workflow_id="run-1")
    second = workflow.instantiate({"order_id": 2, "email": "d@e.f"}, workflow_id="run-2")
    first.check()
    assert run_graph(first, FUNCTIONS).get() == {"charged": ["reserved 1", 100]}
    assert run_graph(second, FUNCTIONS).get() == {"charged": ["reserved 2", 200]}
    assert first.steps[3].kwargs == {"to": "a@b.c"}
    assert first.id == "run-1"
    assert first.task_id(0) != second.task_id(0)


def test_steps_combine_results_by_how_many_they_wait_for() -> None:
    graph = checkout().instantiate({"order_id": 1, "email": "x"})
    combines = {step.name: (step.inputs, step.combine) for step in graph.steps}
    assert combines == {
        "reserve": ((), "none"),
        "price": ((), "none"),
        "charge": ((0, 1), "list"),  # several: the list of results, in after= order
        "receipt": ((2,), "none"),  # immutable: waits only
    }
    single = Workflow("w", steps=(Step("a", reserve), Step("b", charge, after=("a",))))
    assert single.instantiate().steps[1].combine == "prepend"


def test_a_failed_step_skips_what_depends_on_it_and_not_the_rest() -> None:
    workflow = Workflow(
        "w",
        params=("order_id",),
        steps=(
            Step("reserve", Signature("boom"), bind={"order_id": "order_id"}),
            Step("price", price, bind={"order_id": "order_id"}),
            Step("charge", charge, after=("reserve", "price")),
        ),
        on_error=(Signature("shop.refund"),),
    )
    run = run_graph(workflow.instantiate({"order_id": 3}), FUNCTIONS)
    assert run.status is not None
    assert [run.status.state_of(name) for name in ("reserve", "price", "charge")] == [
        "failed",
        "done",
        "skipped",
    ]
    assert [e.errback.task for e in run.errbacks] == ["shop.refund"]
    assert run.status.state == "failed"


def test_a_workflow_round_trips_through_json_and_is_checked_when_decoded() -> None:
    workflow = checkout()
    data = msgspec.json.encode(workflow)
    assert msgspec.json.decode(data, type=Workflow) == workflow
    broken = data.replace(b'"after":["reserve","price"]', b'"after":["reserve","prize"]')
    with pytest.raises(msgspec.ValidationError, match="'prize', which is not a step"):
        msgspec.json.decode(broken, type=Workflow)


def test_duplicate_step_names_are_rejected() -> None:
    message = problems(steps=(Step("a", reserve), Step("a", price)))
    assert "step 'a' appears more than once" in message


def test_missing_inputs_are_rejected() -> None:
    message = problems(steps=(Step("a", reserve), Step("b", charge, after=("a", "nope"))))
    assert "step 'b' waits for 'nope', which is not a step" in message


def test_cycles_are_rejected_with_their_path() -> None:
    message = problems(
        steps=(
            Step("a", reserve, after=("c",)),
            Step("b", price, after=("a",)),
            Step("c", charge, after=("b",)),
            Step("d", charge, after=("c",)),
        )
    )
    assert "cycle: a -> c -> b -> a" in message
    assert "cycle: a -> a" in problems(steps=(Step("a", reserve, after=("a",)),))


def test_unknown_tasks_are_rejected_against_the_known_names() -> None:
    workflow = Workflow(
        "w",
        steps=(Step("a", reserve.on_error(Signature("shop.gone"))), Step("b", Signature("x"))),
        output="a",
    )
    with pytest.raises(InvalidWorkflow) as caught:
        workflow.check_tasks(FUNCTIONS)
    assert str(caught.value) == (
        "workflow 'w': unknown tasks: 'shop.gone' (step 'a'), 'x' (step 'b')"
    )
    checkout().check_tasks(FUNCTIONS)  # every name known: no error
    assert checkout().task_names() == {
        "shop.reserve",
        "shop.price",
        "shop.charge",
        "shop.receipt",
    }


def test_parameters_are_checked_when_built_and_when_started() -> None:
    assert "binds 'order_id' to 'oid', which is not a parameter" in problems(
        steps=(Step("a", reserve, bind={"order_id": "oid"}),)
    )
    assert "parameter 'p' appears more than once" in problems(params=("p", "p"))
    taken = Signature("shop.reserve", kwargs={"order_id": 1})
    assert "binds 'order_id', which its signature already sets" in problems(
        params=("p",), steps=(Step("a", taken, bind={"order_id": "p"}),)
    )
    with pytest.raises(InvalidWorkflow, match="missing parameters: email; unknown parameters: x"):
        checkout().instantiate({"order_id": 1, "x": 2})


def test_the_result_step_must_be_clear() -> None:
    assert "output 'z' is not a step" in problems(output="z")
    message = problems(steps=(Step("a", reserve), Step("b", price)))
    assert "several steps end the workflow (a, b): name the result with output=" in message
    assert (
        Workflow("w", steps=(Step("a", reserve), Step("b", price, after=("a",)))).result_step == "b"
    )


def test_shapes_that_cannot_be_a_workflow() -> None:
    assert "at least one step" in problems(steps=())
    assert "needs a name" in problems(name="")
    assert "after= is a list of step names, not a string" in problems(
        steps=(Step("a", reserve), Step("b", price, after="a"))  # type: ignore[arg-type]
    )
    assert "step 'b' waits for 'a' appears more than once" in problems(
        steps=(Step("a", reserve), Step("b", price, after=("a", "a")))
    )


def test_every_problem_is_named_at_once() -> None:
    message = problems(steps=(Step("a", reserve), Step("a", price, after=("x",))), output="nope")
    assert message.count(";") >= 2


def test_a_run_moves_steps_forward_only() -> None:
    graph = checkout().instantiate({"order_id": 1, "email": "x"})
    run = WorkflowRun.start(graph)
    assert run.state == "pending"
    assert run.counts() == {"pending": 4}
    run = run.advance("reserve", "running").advance("reserve", "running")  # a redelivery
    assert run.state == "running"
    run = run.advance("reserve", "done")
    assert run.advance("reserve", "done") is run  # a redelivered result changes nothing
    with pytest.raises(CanvasError, match="cannot go from done to running"):
        run.advance("reserve", "running")
    run = run.advance("price", "failed").advance("charge", "skipped").advance(3, "skipped")
    assert run.state == "failed"
    assert run.finished
    assert run.steps_in("skipped") == [2, 3]
    with pytest.raises(KeyError):
        run.state_of("nope")
