"""Canvas and workflows as data: signatures, primitives, the normal form, local runs.

- :mod:`~celeriac.canvas.signature`: :class:`Signature` (``task.s()``, ``task.si()``).
- :mod:`~celeriac.canvas.primitives`: :func:`chain`, :func:`group`, :func:`chord`,
  :class:`Map`, :class:`Starmap`, :class:`Chunks`, and JSON round trips.
- :mod:`~celeriac.canvas.graph` and :mod:`~celeriac.canvas.flatten`: the normal form
  (a DAG of small step records) that the router stores and drives.
- :mod:`~celeriac.canvas.outcomes`: what a step does once its inputs settled.
- :mod:`~celeriac.canvas.local`: run a canvas or a graph here, with plain functions.
- :mod:`~celeriac.canvas.workflow` and :mod:`~celeriac.canvas.status`: declarative
  workflows and the status of a run.

See docs/canvas.md.
"""

from __future__ import annotations

from celeriac.canvas.errors import CanvasError, GroupFailed, InvalidCanvas, InvalidWorkflow
from celeriac.canvas.flatten import to_graph
from celeriac.canvas.graph import FAN_IN, Graph, StepRecord, WorkflowRecord, step_task_id
from celeriac.canvas.local import LocalRun, run_graph, run_local
from celeriac.canvas.outcomes import (
    Call,
    Done,
    Failed,
    Failure,
    GroupFailure,
    MemberFailure,
    Skipped,
    StepOutcome,
    TaskFailure,
    prepare,
)
from celeriac.canvas.primitives import (
    Canvas,
    Chain,
    Chord,
    Chunks,
    Group,
    Map,
    Starmap,
    chain,
    chord,
    from_builtins,
    from_json,
    group,
    to_builtins,
    to_json,
)
from celeriac.canvas.signature import Options, Signature
from celeriac.canvas.status import WorkflowRun
from celeriac.canvas.workflow import Step, Workflow

__all__ = [
    "FAN_IN",
    "Call",
    "Canvas",
    "CanvasError",
    "Chain",
    "Chord",
    "Chunks",
    "Done",
    "Failed",
    "Failure",
    "Graph",
    "Group",
    "GroupFailed",
    "GroupFailure",
    "InvalidCanvas",
    "InvalidWorkflow",
    "LocalRun",
    "Map",
    "MemberFailure",
    "Options",
    "Signature",
    "Skipped",
    "Starmap",
    "Step",
    "StepOutcome",
    "StepRecord",
    "TaskFailure",
    "Workflow",
    "WorkflowRecord",
    "WorkflowRun",
    "chain",
    "chord",
    "from_builtins",
    "from_json",
    "group",
    "prepare",
    "run_graph",
    "run_local",
    "step_task_id",
    "to_builtins",
    "to_graph",
    "to_json",
]
