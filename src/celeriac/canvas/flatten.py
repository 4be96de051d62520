"""Canvas to normal form: :func:`to_graph` turns any nesting into a DAG of steps.

Each canvas node becomes steps as follows (``entry`` is the step whose result the
node receives, ``None`` at the start):

- a signature: one task step; input ``entry``, prepended unless it is immutable;
- a chain: its members in turn, each member's final step the next one's entry;
- a group: each member from ``entry``, then a join over the members' final steps
  (a tree of joins past :data:`~celeriac.canvas.graph.FAN_IN` members), ``after=entry``;
- a chord: its header, then its body with the header's join as entry;
- a map, starmap or chunks: one task step per item (per chunk), then a join.

Every node has exactly one final step, so a canvas has one final step: its result.
A failed task calls the error callbacks of its own signature first, then those of
the canvases around it from the inside out; each distinct callback is stored once in
:attr:`Graph.errbacks` and once in a step's list.
"""

from __future__ import annotations

from typing import Any

from celeriac.canvas.graph import FAN_IN, Combine, ErrbackTable, Graph, StepRecord, WorkflowRecord
from celeriac.canvas.primitives import (
    Canvas,
    Chain,
    Chord,
    Chunks,
    Group,
    Map,
    Starmap,
    task_count,
)
from celeriac.canvas.signature import Options, Signature
from celeriac.messages import new_id

__all__ = ["to_graph"]


def to_graph(canvas: Canvas, *, workflow_id: str | None = None, name: str | None = None) -> Graph:
    """The normal form of ``canvas``: what the router stores to run it.

    ``workflow_id`` defaults to a new random id; ``name`` is informative.
    """
    builder = _Builder(task_count(canvas))
    final = builder.add(canvas, None, ())
    record = WorkflowRecord(
        id=workflow_id or new_id(),
        final=final,
        size=len(builder.tasks) + len(builder.joins),
        tasks=len(builder.tasks),
        errbacks=len(builder.errbacks),
        name=name,
    )
    return Graph(record, (*builder.tasks, *builder.joins), tuple(builder.errbacks))


class _Builder:
    """Numbers task steps depth-first from 0, joins after all the task steps."""

    def __init__(self, tasks: int) -> None:
        self.task_total = tasks
        self.tasks: list[StepRecord] = []
        self.joins: list[StepRecord] = []
        self.table = ErrbackTable()
        self.errbacks = self.table.signatures

    def add(self, canvas: Canvas, entry: int | None, outer: tuple[int, ...]) -> int:
        """Add the steps of ``canvas`` fed from ``entry``; return its final step's id."""
        scope = self.table.scope(canvas.errbacks, outer)
        if isinstance(canvas, Signature):
            combine: Combine = "none" if canvas.immutable or entry is None else "prepend"
            return self._task(
                canvas.task, canvas.args, canvas.kwargs, canvas.options, entry, combine, scope
            )
        if isinstance(canvas, Chain):
            for task in canvas.tasks:
                entry = self.add(task, entry, scope)
            assert entry is not None  # a chain is never empty
            return entry
        if isinstance(canvas, Group):
            return self._join([self.add(task, entry, scope) for task in canvas.tasks], entry)
        if isinstance(canvas, Chord):
            header = self.add(canvas.header, entry, scope)
            return self.add(canvas.body, header, scope)
        return self._calls(canvas, entry, scope)

    def _calls(
        self, canvas: Map | Starmap | Chunks, entry: int | None, scope: tuple[int, ...]
    ) -> int:
        combine: Combine = "none" if entry is None else "prepend"
        name, options = canvas.task, canvas.options
        if isinstance(canvas, Map):
            members = [
                self._task(name, (item,), {}, options, entry, combine, scope)
                for item in canvas.items
            ]
        elif isinstance(canvas, Starmap):
            members = [
                self._task(name, item, {}, options, entry, combine, scope) for item in canvas.items
            ]
        else:
            # A chunk's argument lists are stored as JSON has them: lists.
            members = [
                self._task(
                    name, tuple(map(list, chunk)), {}, options, entry, combine, scope, starmap=True
                )
                for chunk in canvas.chunked()
            ]
        return self._join(members, entry)

    def _task(
        self,
        task: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: Options,
        entry: int | None,
        combine: Combine,
        errbacks: tuple[int, ...],
        *,
        starmap: bool = False,
    ) -> int:
        step = StepRecord(
            id=len(self.tasks),
            task=task,
            args=args,
            kwargs=kwargs,
            options=options,
            apply="starmap" if starmap else "call",
            inputs=() if entry is None else (entry,),
            combine=combine,
            errbacks=errbacks,
        )
        self.tasks.append(step)
        return step.id

    def _join(self, finals: list[int], after: int | None) -> int:
        if len(finals) <= FAN_IN:
            return self._new_join(finals, "list", after)
        level = [
            self._new_join(finals[i : i + FAN_IN], "list", after)
            for i in range(0, len(finals), FAN_IN)
        ]
        while len(level) > FAN_IN:
            level = [
                self._new_join(level[i : i + FAN_IN], "concat", None)
                for i in range(0, len(level), FAN_IN)
            ]
        return self._new_join(level, "concat", None)

    def _new_join(self, inputs: list[int], combine: Combine, after: int | None) -> int:
        step = StepRecord(
            id=self.task_total + len(self.joins),
            inputs=tuple(inputs),
            combine=combine,
            after=after,
        )
        self.joins.append(step)
        return step.id
