"""What a step does once everything it waits for has settled — pure functions.

The router and the local evaluator (:mod:`celeriac.canvas.local`) share these rules,
so a canvas means the same thing on workers as in a test:

- a step's outcome is :class:`Done` (a value), :class:`Failed` (its task raised, or,
  for a join, members failed) or :class:`Skipped` (something it waits for did not
  succeed; ``cause`` is that failure, passed on unchanged);
- :func:`prepare` turns a step and the outcomes of its inputs into the
  :class:`Call` to publish, or, for a join or a step that cannot run, its outcome;
- a failure is a :class:`TaskFailure` (a task raised: which step, which task id,
  the error) or a :class:`GroupFailure` (which members of a group failed, in order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import msgspec

from celeriac.canvas.errors import GroupFailed, InvalidCanvas
from celeriac.canvas.graph import StepRecord
from celeriac.canvas.signature import Signature
from celeriac.tasks.outcome import ErrorInfo

__all__ = [
    "Call",
    "Done",
    "Failed",
    "Failure",
    "GroupFailure",
    "MemberFailure",
    "Skipped",
    "StepOutcome",
    "TaskFailure",
    "errback_call",
    "exception_of",
    "failure_of",
    "prepare",
    "without_tracebacks",
]


class TaskFailure(msgspec.Struct, frozen=True, tag="task", tag_field="type"):
    """A task raised: the step, its task id, the task name and the error."""

    step: int
    task_id: str
    task: str
    error: ErrorInfo


class MemberFailure(msgspec.Struct, frozen=True):
    """Member ``index`` of a group failed with ``failure``."""

    index: int
    failure: Failure


class GroupFailure(msgspec.Struct, frozen=True, tag="group", tag_field="type"):
    """Members of a group of ``size`` failed: ``failures``, in member order."""

    size: int
    failures: tuple[MemberFailure, ...]


Failure: TypeAlias = TaskFailure | GroupFailure


class Done(msgspec.Struct, frozen=True, tag="done", tag_field="state"):
    """The step succeeded with ``value``."""

    value: Any = None


class Failed(msgspec.Struct, frozen=True, tag="failed", tag_field="state"):
    """The step's task raised, or (a join) members of its group failed."""

    failure: Failure


class Skipped(msgspec.Struct, frozen=True, tag="skipped", tag_field="state"):
    """The step never ran: something it waits for failed with ``cause``."""

    cause: Failure


StepOutcome: TypeAlias = Done | Failed | Skipped


class Call(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a ready task step runs: ``task(*args, **kwargs)``.

    For a chunk, ``each`` holds one argument list per call: the step runs
    ``task(*args, *item, **kwargs)`` for each item, and its result is the list of
    their results.
    """

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    each: tuple[tuple[Any, ...], ...] | None = None


def failure_of(outcome: StepOutcome) -> Failure | None:
    """The failure an outcome passes on: ``None`` for :class:`Done`."""
    if isinstance(outcome, Failed):
        return outcome.failure
    if isinstance(outcome, Skipped):
        return outcome.cause
    return None


def prepare(
    step: StepRecord, inputs: Sequence[StepOutcome], after: StepOutcome | None = None
) -> Call | StepOutcome:
    """The call to run for ``step``, or its outcome if it runs nothing.

    ``inputs`` are the outcomes of ``step.inputs``, in order; ``after`` that of
    ``step.after``. A task step whose inputs all succeeded gets a :class:`Call`; one
    with a failed input is :class:`Skipped` with the first failure, in input order.
    A join settles here: the list (or concatenation) of its inputs' values, or a
    :class:`GroupFailure` naming every failed member.
    """
    if len(inputs) != len(step.inputs):
        raise InvalidCanvas(f"step {step.id} has {len(step.inputs)} inputs, given {len(inputs)}")
    if after is not None:
        cause = failure_of(after)
        if cause is not None:
            return Skipped(cause)
    if step.task is None:
        return _join(step, inputs)
    values = []
    for outcome in inputs:
        if not isinstance(outcome, Done):
            return Skipped(_cause(outcome))
        values.append(outcome.value)
    prefix: tuple[Any, ...] = ()
    if step.combine == "prepend":
        prefix = (values[0],)
    elif step.combine == "list":
        prefix = (values,)
    if step.apply == "starmap":
        return Call(step.task, prefix, step.kwargs, each=tuple(tuple(item) for item in step.args))
    return Call(step.task, prefix + step.args, step.kwargs)


def _cause(outcome: Failed | Skipped) -> Failure:
    return outcome.failure if isinstance(outcome, Failed) else outcome.cause


def _join(step: StepRecord, inputs: Sequence[StepOutcome]) -> StepOutcome:
    if step.combine == "concat":
        return _concat(inputs)
    values: list[Any] = []
    failures: list[MemberFailure] = []
    for index, outcome in enumerate(inputs):
        if isinstance(outcome, Done):
            values.append(outcome.value)
        else:
            failures.append(MemberFailure(index, _cause(outcome)))
    if failures:
        return Failed(GroupFailure(len(inputs), tuple(failures)))
    return Done(values)


def _concat(inputs: Sequence[StepOutcome]) -> StepOutcome:
    # The inputs are joins over consecutive slices of one group: shift their indices.
    for outcome in inputs:
        if isinstance(outcome, Skipped):
            return outcome
    values: list[Any] = []
    failures: list[MemberFailure] = []
    offset = 0
    for outcome in inputs:
        if isinstance(outcome, Done):
            values.extend(outcome.value)
            offset += len(outcome.value)
        elif isinstance(outcome, Failed) and isinstance(outcome.failure, GroupFailure):
            part = outcome.failure
            failures += [MemberFailure(offset + m.index, m.failure) for m in part.failures]
            offset += part.size
        else:
            raise InvalidCanvas("a concatenating join's inputs must be joins")
    if failures:
        return Failed(GroupFailure(offset, tuple(failures)))
    return Done(values)


def errback_call(errback: Signature, task_id: str, error: ErrorInfo) -> Call:
    """The call of error callback ``errback`` for the failed task ``task_id``.

    ``errback(task_id, error, *args, **kwargs)``, ``error`` being the ErrorInfo as a
    dict; an immutable callback gets only its own arguments.
    """
    if errback.immutable:
        return Call(errback.task, errback.args, errback.kwargs)
    info = msgspec.to_builtins(error)
    return Call(errback.task, (task_id, info, *errback.args), errback.kwargs)


def exception_of(
    failure: Failure, rebuild: Callable[[TaskFailure], BaseException]
) -> BaseException:
    """The exception ``Result.get()`` raises for ``failure``.

    A task's failure is its own error, as ``rebuild`` makes it (from the ErrorInfo,
    or the original exception where it is at hand); a group's is
    :class:`~celeriac.canvas.errors.GroupFailed`.
    """
    if isinstance(failure, TaskFailure):
        return rebuild(failure)
    return GroupFailed(failure)


def without_tracebacks(failure: Failure) -> Failure:
    """``failure`` with every traceback text emptied: for comparing failures that
    happened in different processes."""
    if isinstance(failure, TaskFailure):
        error = msgspec.structs.replace(failure.error, traceback="")
        return msgspec.structs.replace(failure, error=error)
    members = tuple(MemberFailure(m.index, without_tracebacks(m.failure)) for m in failure.failures)
    return GroupFailure(failure.size, members)
