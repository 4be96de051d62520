"""The normal form of a canvas or workflow: a DAG of small step records.

This is what the router stores, one record per step, plus one record per workflow.
A step's message carries only the workflow id and the step id; everything else is
looked up. No record embeds another, and no record grows with the size of the
canvas (see docs/canvas.md, "The normal form"):

- a **task step** (``task`` set) runs one call of a task, or one call per item
  (``apply="starmap"``: a chunk). ``inputs`` are the steps whose results it waits for;
  ``combine`` says what it does with them: ``"prepend"`` (one input: its result
  goes first in ``args``), ``"list"`` (the list of their results goes first) or
  ``"none"`` (it only waits).
- a **join** (``task`` is ``None``) runs nothing: it is a group's barrier. Its value
  is the list of its inputs' results (``combine="list"``) or the concatenation of
  its inputs' lists (``"concat"``: a join of joins). A join has at most
  :data:`FAN_IN` inputs, so a group of 100,000 members is a small tree of joins, not
  one record listing 100,000 ids. ``after`` is the step the group was fed from: if
  it failed, the join is skipped rather than failed.

Step ids are dense: ``0 .. len(steps) - 1``. For a canvas, the task steps come first,
numbered depth-first in canvas order (a chain's members in order, a group's
members in order, a chord's header before its body, a map's items in order), then
the joins in the order they were made.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, Literal

import msgspec

from celeriac.canvas.errors import InvalidCanvas
from celeriac.canvas.signature import NO_OPTIONS, Options, Signature, identity

__all__ = [
    "FAN_IN",
    "Combine",
    "ErrbackTable",
    "Graph",
    "StepRecord",
    "WorkflowRecord",
    "step_task_id",
]

FAN_IN = 64
"""The most inputs a join has; larger groups get a tree of joins."""

Combine = Literal["prepend", "list", "concat", "none"]


class StepRecord(msgspec.Struct, frozen=True, omit_defaults=True, repr_omit_defaults=True):
    """One step of a workflow, as the router stores it.

    - ``id``: the step id, unique within its workflow.
    - ``task``: the task to run, or ``None`` for a join.
    - ``name``: the step's name in a :class:`~celeriac.canvas.workflow.Workflow`.
    - ``args``, ``kwargs``, ``options``: the call, as the signature gave it. For a
      chunk (``apply="starmap"``), ``args`` is the list of argument lists, one call each.
    - ``inputs``, ``combine``: what the step waits for and does with the results.
    - ``after``: a step a join also waits for, whose result it does not use.
    - ``errbacks``: indices into :attr:`Graph.errbacks`: the error callbacks to call
      once if this step's task raises.
    """

    id: int
    task: str | None = None
    name: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    options: Options = NO_OPTIONS
    apply: Literal["call", "starmap"] = "call"
    inputs: tuple[int, ...] = ()
    combine: Combine = "none"
    after: int | None = None
    errbacks: tuple[int, ...] = ()

    @property
    def is_join(self) -> bool:
        """True for a join (a group's barrier), which runs no task."""
        return self.task is None

    def waits_for(self) -> tuple[int, ...]:
        """Every step that must settle before this one: its inputs, then ``after``."""
        if self.after is None:
            return self.inputs
        return (*self.inputs, self.after)


class WorkflowRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """One running canvas or workflow, as the router stores it.

    ``final`` is the step whose outcome is the workflow's result; ``size`` the number
    of steps, ``tasks`` how many of them are task steps (one message each), and
    ``errbacks`` the number of error callbacks. Roots and error callbacks are not
    listed here: both can be as many as the steps (look them up, or use
    :meth:`Graph.roots`).
    """

    id: str
    final: int
    size: int
    tasks: int
    errbacks: int = 0
    name: str | None = None


class Graph(msgspec.Struct, frozen=True, omit_defaults=True):
    """A workflow in normal form: its record, its steps (by id), its error callbacks."""

    workflow: WorkflowRecord
    steps: tuple[StepRecord, ...]
    errbacks: tuple[Signature, ...] = ()

    @property
    def id(self) -> str:
        """The workflow id."""
        return self.workflow.id

    @property
    def final(self) -> StepRecord:
        """The step whose outcome is the result."""
        return self.steps[self.workflow.final]

    def task_id(self, step: int) -> str:
        """The task id (message id, result key) of step ``step``'s run."""
        return step_task_id(self.workflow.id, step)

    def roots(self) -> Iterator[StepRecord]:
        """The steps that wait for nothing: where the workflow starts."""
        return (step for step in self.steps if not step.waits_for())

    def dependents(self) -> list[list[int]]:
        """For each step id, the ids of the steps that wait for it."""
        out: list[list[int]] = [[] for _ in self.steps]
        for step in self.steps:
            for source in step.waits_for():
                out[source].append(step.id)
        return out

    def check(self) -> None:
        """Raise :class:`InvalidCanvas` unless this is a well-formed normal form.

        Checked: dense ids, inputs that exist, a ``combine`` that fits the step, join
        sizes, error callback indices, the record's counts, and no cycle.
        """
        problems = list(_problems(self))
        if problems:
            raise InvalidCanvas("malformed graph: " + "; ".join(problems[:10]))


class ErrbackTable:
    """The error callbacks of one graph, each stored once: :meth:`add` gives its index."""

    def __init__(self) -> None:
        self.signatures: list[Signature] = []
        self._index: dict[bytes, int] = {}

    def add(self, errback: Signature) -> int:
        """The index of ``errback`` in the table, adding it if it is new."""
        key = identity(errback)
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = len(self.signatures)
            self.signatures.append(errback)
        return index

    def scope(self, own: tuple[Signature, ...], outer: tuple[int, ...] = ()) -> tuple[int, ...]:
        """The callbacks of a step: ``own`` first, then ``outer``, each once."""
        if not own:
            return outer
        return tuple(dict.fromkeys([*(self.add(errback) for errback in own), *outer]))


def step_task_id(workflow_id: str, step: int) -> str:
    """The task id of step ``step`` of workflow ``workflow_id``: 32 lowercase hex.

    Derived, not random, so a redelivered or republished step keeps its id (and its
    result key), and a process that has only the two ids can find the result.
    """
    digest = hashlib.blake2b(f"{workflow_id}:{step}".encode(), digest_size=16)
    return digest.hexdigest()


def _problems(graph: Graph) -> Iterator[str]:
    steps = graph.steps
    size = len(steps)
    record = graph.workflow
    if record.size != size:
        yield f"the workflow record says {record.size} steps, there are {size}"
    if not 0 <= record.final < size:
        yield f"final step {record.final} does not exist"
    if record.errbacks != len(graph.errbacks):
        yield f"the workflow record says {record.errbacks} error callbacks"
    if record.tasks != sum(not step.is_join for step in steps):
        yield f"the workflow record says {record.tasks} task steps"
    for index, step in enumerate(steps):
        if step.id != index:
            yield f"step at position {index} has id {step.id}"
        for source in step.waits_for():
            if not 0 <= source < size:
                yield f"step {step.id} waits for step {source}, which does not exist"
        for errback in step.errbacks:
            if not 0 <= errback < len(graph.errbacks):
                yield f"step {step.id} has error callback {errback}, which does not exist"
        yield from _shape_problems(step)
    cycle = _cycle(graph)
    if cycle:
        yield "cycle through steps " + " -> ".join(map(str, cycle))


def _shape_problems(step: StepRecord) -> Iterator[str]:
    if step.is_join:
        if step.combine not in ("list", "concat"):
            yield f"join {step.id} combines {step.combine!r}"
        if len(step.inputs) > FAN_IN:
            yield f"join {step.id} has {len(step.inputs)} inputs (at most {FAN_IN})"
        if step.args or step.kwargs or step.errbacks or step.apply != "call":
            yield f"join {step.id} has a call"
        return
    if step.combine == "concat":
        yield f"task step {step.id} combines 'concat'"
    if step.combine == "prepend" and len(step.inputs) != 1:
        yield f"task step {step.id} prepends {len(step.inputs)} inputs"
    if step.combine == "list" and not step.inputs:
        yield f"task step {step.id} lists no inputs"


def _cycle(graph: Graph) -> list[int]:
    """A cycle of steps, or ``[]``: an iterative depth-first search."""
    size = len(graph.steps)
    state = [0] * size  # 0 new, 1 on the current path, 2 done
    for start in range(size):
        if state[start]:
            continue
        path = [start]
        todo = [iter(_edges(graph, start))]
        state[start] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
            elif state[nxt] == 1:
                return [*path[path.index(nxt) :], nxt]
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter(_edges(graph, nxt)))
    return []


def _edges(graph: Graph, step: int) -> list[int]:
    size = len(graph.steps)
    return [source for source in graph.steps[step].waits_for() if 0 <= source < size]
