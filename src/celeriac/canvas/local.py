"""Evaluate canvases and workflows in this process, with plain functions.

Two evaluators, one meaning (docs/canvas.md, "Semantics"):

- :func:`run_local` walks the canvas itself, recursively: the specification. A
  chain runs its members in order and stops at the first failure; a group runs
  every member and fails if any failed; a chord runs its body only if its header
  succeeded.
- :func:`run_graph` runs a normal form (:func:`~celeriac.canvas.flatten.to_graph`,
  :meth:`Workflow.instantiate <celeriac.canvas.workflow.Workflow.instantiate>`) the
  way the router does: a step runs once every step it waits for has settled, and
  what it runs comes from :func:`~celeriac.canvas.outcomes.prepare` alone.

For any canvas they produce the same result, the same calls (with the same task
ids) and the same error callback calls; the tests check it on generated canvases,
and the distributed tests compare workers against :func:`run_local`.

``functions`` maps task names to plain (synchronous) callables. A name missing
from it fails its step with :class:`~celeriac.errors.UnknownTask`, as a worker would.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from celeriac.canvas.graph import Graph, step_task_id
from celeriac.canvas.outcomes import (
    Call,
    Done,
    Failed,
    Failure,
    GroupFailure,
    MemberFailure,
    StepOutcome,
    TaskFailure,
    errback_call,
    exception_of,
    failure_of,
    prepare,
)
from celeriac.canvas.primitives import (
    Canvas,
    Chain,
    Chord,
    Group,
    Map,
    Starmap,
    task_count,
)
from celeriac.canvas.signature import Signature, identity
from celeriac.canvas.status import StepState, WorkflowRun
from celeriac.errors import CeleriacError, UnknownTask
from celeriac.tasks.outcome import ErrorInfo, error_info

__all__ = ["ErrbackRun", "Executed", "Functions", "LocalRun", "run_graph", "run_local"]

Functions = Mapping[str, Callable[..., Any]]


@dataclass(frozen=True)
class Executed:
    """One task step that ran: its step id, task id, call and outcome."""

    step: int
    task_id: str
    call: Call
    outcome: Done | Failed


@dataclass(frozen=True)
class ErrbackRun:
    """One call of an error callback for the failed task ``task_id``.

    ``error`` is the callback's own error if it raised (which changes nothing else).
    """

    errback: Signature
    task_id: str
    call: Call
    error: ErrorInfo | None = None


@dataclass
class LocalRun:
    """The outcome of a local evaluation.

    ``outcome`` is the final step's: :class:`Done` with the result, :class:`Failed`,
    or :class:`Skipped` (the final step never ran; ``cause`` says why). ``calls``
    are the task steps that ran, in the order they ran; ``errbacks`` the error
    callbacks called; ``status`` each step's state (:func:`run_graph` only).
    """

    workflow_id: str
    outcome: StepOutcome
    calls: list[Executed] = field(default_factory=list)
    errbacks: list[ErrbackRun] = field(default_factory=list)
    status: WorkflowRun | None = None
    exceptions: dict[str, BaseException] = field(default_factory=dict, repr=False)

    @property
    def failure(self) -> Failure | None:
        """Why the run failed, or ``None`` if it succeeded."""
        return failure_of(self.outcome)

    @property
    def value(self) -> Any:
        """The result (``None`` if the run failed; :meth:`get` raises instead)."""
        return self.outcome.value if isinstance(self.outcome, Done) else None

    def get(self) -> Any:
        """The result, or raise what ``Result.get()`` of the whole canvas raises: the
        failed task's own exception, or :class:`~celeriac.canvas.errors.GroupFailed`."""
        failure = self.failure
        if failure is None:
            return self.value
        raise exception_of(failure, self._exception)

    def _exception(self, failure: TaskFailure) -> BaseException:
        found = self.exceptions.get(failure.task_id)
        if found is not None:
            return found
        return CeleriacError(f"{failure.error.type}: {failure.error.message}")


class _Executor:
    """Runs calls and error callbacks, and keeps the log both evaluators share."""

    def __init__(self, functions: Functions, workflow_id: str) -> None:
        self.functions = functions
        self.run = LocalRun(workflow_id, Done())

    def call(self, step: int, call: Call, errbacks: Sequence[Signature]) -> Done | Failed:
        task_id = step_task_id(self.run.workflow_id, step)
        outcome: Done | Failed
        try:
            outcome = Done(self._invoke(call))
        except Exception as exc:
            self.run.exceptions[task_id] = exc
            error = error_info(exc)
            outcome = Failed(TaskFailure(step, task_id, call.task, error))
            for errback in errbacks:
                self._errback(errback, task_id, error)
        self.run.calls.append(Executed(step, task_id, call, outcome))
        return outcome

    def _errback(self, errback: Signature, task_id: str, error: ErrorInfo) -> None:
        call = errback_call(errback, task_id, error)
        failed: ErrorInfo | None = None
        try:
            self._invoke(call)
        except Exception as exc:
            failed = error_info(exc)
        self.run.errbacks.append(ErrbackRun(errback, task_id, call, failed))

    def _invoke(self, call: Call) -> Any:
        fn = self.functions.get(call.task)
        if fn is None:
            raise UnknownTask(call.task)
        if call.each is None:
            return fn(*call.args, **call.kwargs)
        return [fn(*call.args, *item, **call.kwargs) for item in call.each]


def run_local(canvas: Canvas, functions: Functions, *, workflow_id: str = "local") -> LocalRun:
    """Evaluate ``canvas`` by walking it: the reference meaning of every primitive.

    Task ids are those the normal form gives (``step_task_id(workflow_id, step)``,
    steps numbered depth-first), so they match :func:`run_graph` and the router.
    """
    walker = _Walker(_Executor(functions, workflow_id))
    walker.run.outcome = walker.eval(canvas, None, ())
    return walker.run


class _Walker:
    def __init__(self, executor: _Executor) -> None:
        self.executor = executor
        self.run = executor.run
        self.next_step = 0

    def eval(self, node: Canvas, given: Done | None, outer: tuple[Signature, ...]) -> Done | Failed:
        """Evaluate ``node``, fed ``given`` (``None``: nothing before it)."""
        scope = _scope(node.errbacks, outer)
        if isinstance(node, Signature):
            prefix = () if given is None or node.immutable else (given.value,)
            call = Call(node.task, prefix + node.args, node.kwargs)
            return self._call(call, scope)
        if isinstance(node, Chain):
            current = given
            for index, task in enumerate(node.tasks):
                outcome = self.eval(task, current, scope)
                if isinstance(outcome, Failed):
                    self._skip(*node.tasks[index + 1 :])
                    return outcome
                current = outcome
            assert current is not None  # a chain is never empty
            return current
        if isinstance(node, Group):
            return _gather([self.eval(task, given, scope) for task in node.tasks])
        if isinstance(node, Chord):
            header = self.eval(node.header, given, scope)
            if isinstance(header, Failed):
                self._skip(node.body)
                return header
            return self.eval(node.body, header, scope)
        prefix = () if given is None else (given.value,)
        if isinstance(node, Map):
            calls = [Call(node.task, (*prefix, item)) for item in node.items]
        elif isinstance(node, Starmap):
            calls = [Call(node.task, (*prefix, *item)) for item in node.items]
        else:
            calls = [Call(node.task, prefix, each=chunk) for chunk in node.chunked()]
        return _gather([self._call(call, scope) for call in calls])

    def _call(self, call: Call, errbacks: tuple[Signature, ...]) -> Done | Failed:
        step = self.next_step
        self.next_step += 1
        return self.executor.call(step, call, errbacks)

    def _skip(self, *nodes: Canvas) -> None:
        # Steps that never run keep their numbers, as in the normal form.
        self.next_step += sum(task_count(node) for node in nodes)


def _scope(own: tuple[Signature, ...], outer: tuple[Signature, ...]) -> tuple[Signature, ...]:
    if not own:
        return outer
    unique: dict[bytes, Signature] = {}
    for errback in (*own, *outer):
        unique.setdefault(identity(errback), errback)
    return tuple(unique.values())


def _gather(outcomes: list[Done | Failed]) -> Done | Failed:
    failures = [
        MemberFailure(index, outcome.failure)
        for index, outcome in enumerate(outcomes)
        if isinstance(outcome, Failed)
    ]
    if failures:
        return Failed(GroupFailure(len(outcomes), tuple(failures)))
    return Done([outcome.value for outcome in outcomes if isinstance(outcome, Done)])


def run_graph(graph: Graph, functions: Functions) -> LocalRun:
    """Run a normal form step by step, as the router will; lowest ready step first.

    Fills :attr:`LocalRun.status` with every step's final state.
    """
    executor = _Executor(functions, graph.id)
    steps = graph.steps
    dependents = graph.dependents()
    waiting = [len(step.waits_for()) for step in steps]
    outcomes: list[StepOutcome | None] = [None] * len(steps)
    ready = [step.id for step in graph.roots()]
    heapq.heapify(ready)
    while ready:
        step = steps[heapq.heappop(ready)]
        inputs = [_settled(outcomes, source) for source in step.inputs]
        after = None if step.after is None else _settled(outcomes, step.after)
        prepared = prepare(step, inputs, after)
        if isinstance(prepared, Call):
            errbacks = [graph.errbacks[index] for index in step.errbacks]
            outcomes[step.id] = executor.call(step.id, prepared, errbacks)
        else:
            outcomes[step.id] = prepared
        for dependent in dependents[step.id]:
            waiting[dependent] -= 1
            if not waiting[dependent]:
                heapq.heappush(ready, dependent)
    run = executor.run
    run.outcome = _settled(outcomes, graph.workflow.final)
    states = tuple(_state(_settled(outcomes, step.id)) for step in steps)
    run.status = msgspec.structs.replace(WorkflowRun.start(graph), states=states)
    return run


def _settled(outcomes: list[StepOutcome | None], step: int) -> StepOutcome:
    outcome = outcomes[step]
    if outcome is None:
        raise CeleriacError(f"step {step} never became ready: the graph has a cycle")
    return outcome


def _state(outcome: StepOutcome) -> StepState:
    if isinstance(outcome, Done):
        return "done"
    return "failed" if isinstance(outcome, Failed) else "skipped"
