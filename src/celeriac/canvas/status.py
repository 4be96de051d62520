"""The status of one run of a workflow or canvas, as pure data.

A :class:`WorkflowRun` says, for every step, whether it is pending, running, done,
failed or skipped (never ran because something it waits for failed). It is built
from the graph (:meth:`WorkflowRun.start`) and moved on one step at a time
(:meth:`WorkflowRun.advance`), which refuses impossible moves: a step that is done
never runs again, so a redelivered result can move a step only to where it is.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal, TypeAlias

import msgspec

from celeriac.canvas.errors import CanvasError
from celeriac.canvas.graph import Graph

__all__ = ["RunState", "StepState", "WorkflowRun"]

StepState: TypeAlias = Literal["pending", "running", "done", "failed", "skipped"]
RunState: TypeAlias = Literal["pending", "running", "done", "failed"]

_SETTLED = frozenset({"done", "failed", "skipped"})
_MOVES: dict[str, frozenset[str]] = {
    "pending": frozenset({"pending", "running", "done", "failed", "skipped"}),
    "running": frozenset({"running", "done", "failed"}),  # running again: a redelivery
    "done": frozenset({"done"}),
    "failed": frozenset({"failed"}),
    "skipped": frozenset({"skipped"}),
}


class WorkflowRun(msgspec.Struct, frozen=True):
    """Which steps of run ``id`` are pending, running, done, failed or skipped.

    ``states[i]`` is the state of step ``i``; ``names`` maps the named steps of a
    :class:`~celeriac.canvas.workflow.Workflow` to their ids. Joins (a group's
    barrier) are steps too: they go from pending to done, failed or skipped.
    """

    id: str
    final: int
    states: tuple[StepState, ...]
    names: dict[str, int] = {}
    name: str | None = None

    @classmethod
    def start(cls, graph: Graph) -> WorkflowRun:
        """A run of ``graph`` where no step has started."""
        names = {step.name: step.id for step in graph.steps if step.name is not None}
        pending: StepState = "pending"
        states = (pending,) * len(graph.steps)
        return cls(graph.id, graph.workflow.final, states, names, graph.workflow.name)

    def _index(self, step: int | str) -> int:
        if isinstance(step, str):
            if step not in self.names:
                raise KeyError(f"no step named {step!r} in this workflow")
            return self.names[step]
        if not 0 <= step < len(self.states):
            raise KeyError(f"no step {step} in this workflow")
        return step

    def state_of(self, step: int | str) -> StepState:
        """The state of a step, by id or by name."""
        return self.states[self._index(step)]

    def advance(self, step: int | str, state: StepState) -> WorkflowRun:
        """This run with ``step`` moved to ``state``.

        Raises :class:`CanvasError` for a move that cannot happen (a settled step
        changing, a running step going back to pending or being skipped).
        """
        index = self._index(step)
        current = self.states[index]
        if state not in _MOVES[current]:
            raise CanvasError(f"step {step!r} cannot go from {current} to {state}")
        if current == state:
            return self
        states = (*self.states[:index], state, *self.states[index + 1 :])
        return msgspec.structs.replace(self, states=states)

    def steps_in(self, state: StepState) -> list[int]:
        """The ids of the steps in ``state``."""
        return [index for index, current in enumerate(self.states) if current == state]

    def counts(self) -> dict[StepState, int]:
        """How many steps are in each state (states with none are left out)."""
        return dict(Counter(self.states))

    @property
    def finished(self) -> bool:
        """Every step is done, failed or skipped."""
        return all(state in _SETTLED for state in self.states)

    @property
    def state(self) -> RunState:
        """``done`` or ``failed`` once the final step settled (``failed`` also when it
        was skipped); ``pending`` while nothing started; ``running`` otherwise.

        A failed run may still have steps running on other branches: see
        :attr:`finished`.
        """
        final = self.states[self.final]
        if final == "done":
            return "done"
        if final in ("failed", "skipped"):
            return "failed"
        if all(state == "pending" for state in self.states):
            return "pending"
        return "running"
