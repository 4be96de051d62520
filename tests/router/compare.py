"""Run a canvas on the worker processes and locally, and compare the two runs.

:func:`run_both` starts a canvas (with a workflow id of its own, which
:func:`~celeriac.canvas.run_local` is given too, so both derive the same task ids),
waits for its result and for its queue to drain, and reads back what the workers
did: the result (or error), every task step's stored outcome, every error
callback's stored outcome and the ``t.record`` calls. :func:`assert_same` checks all
of it against the local run.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
from tests.canvas.strategies import TASKS
from tests.router.canvas_app import errback_line
from tests.router.cluster import Cluster, drained, outcomes
from tests.worker.helpers import lines

from celeriac import App, GroupFailed, ResultTimeout
from celeriac.canvas import Canvas, Done, Graph, GroupFailure, LocalRun, run_local, to_graph
from celeriac.canvas.outcomes import without_tracebacks
from celeriac.canvas.signature import identity
from celeriac.router.router import _errback_id
from celeriac.tasks.outcome import FAILURE, SUCCESS, Outcome


@dataclass
class Remote:
    """What the workers did with one canvas."""

    graph: Graph
    value: Any
    error: Exception | None
    tasks: dict[str, Outcome]  #: task id -> stored outcome, for the task steps that ran
    errbacks: dict[tuple[int, int], Outcome]  #: (failed step, callback index) -> outcome
    recorded: list[Any]  #: the arguments of each ``t.record`` call, as recorded

    def step(self, n: int) -> str:
        """The task id of step ``n``."""
        return self.graph.task_id(n)


def plain(value: Any) -> Any:
    """``value`` as it comes back through JSON (tuples become lists)."""
    return msgspec.json.decode(msgspec.json.encode(value))


async def run_both(
    app: App, cluster: Cluster, canvas: Canvas, timeout: float = 30
) -> tuple[LocalRun, Remote]:
    """Run ``canvas`` on the workers and locally; return both runs."""
    wf = uuid.uuid4().hex
    local = run_local(canvas, TASKS, workflow_id=wf)
    graph = to_graph(canvas, workflow_id=wf)
    mark = len(lines(cluster.errbacks))
    result = await app.start_async(canvas, workflow_id=wf)
    value: Any = None
    error: Exception | None = None
    try:
        value = await result.get_async(timeout)
    except ResultTimeout:
        raise
    except Exception as exc:
        error = exc
    await drained(app, timeout=timeout)
    task_ids = [graph.task_id(s.id) for s in graph.steps if s.task is not None]
    errback_ids = {_errback_id(wf, s.id, i): (s.id, i) for s in graph.steps for i in s.errbacks}
    found = await outcomes(app, [*task_ids, *errback_ids])
    recorded = cluster.errback_calls(mark)
    assert all(p.poll() is None for p in cluster.workers), f"a worker died: see {cluster.logs}"
    return local, Remote(
        graph,
        value,
        error,
        {id: found[id] for id in task_ids if id in found},
        {where: found[id] for id, where in errback_ids.items() if id in found},
        recorded,
    )


def assert_same(local: LocalRun, remote: Remote) -> None:
    """The workers did what the local run says: the same result or failure, the same
    task steps run (and no other) with the same outcomes, the same error callbacks
    called once each."""
    failure = local.failure
    if failure is None:
        assert remote.error is None, f"expected {local.value!r}, got {remote.error!r}"
        assert remote.value == plain(local.value)
    elif isinstance(failure, GroupFailure):
        assert isinstance(remote.error, GroupFailed), f"expected GroupFailed, got {remote!r}"
        assert without_tracebacks(remote.error.failure) == without_tracebacks(failure)
    else:
        assert remote.error is not None, f"expected {failure.error.type}, got {remote.value!r}"
        assert type(remote.error).__name__ == failure.error.type
        assert str(remote.error) == failure.error.message

    ran = {call.task_id: call for call in local.calls}
    assert set(remote.tasks) == set(ran), "the task steps that ran differ"
    for id, call in ran.items():
        stored = remote.tasks[id]
        if isinstance(call.outcome, Done):
            assert (stored.state, stored.result) == (SUCCESS, plain(call.outcome.value)), call
        else:
            assert stored.state == FAILURE, call
            assert stored.error is not None
            expected = call.outcome.failure
            assert not isinstance(expected, GroupFailure)
            assert (stored.error.type, stored.error.message) == (
                expected.error.type,
                expected.error.message,
            )

    step_of = {call.task_id: call.step for call in local.calls}
    table = [identity(errback) for errback in remote.graph.errbacks]
    called = {(step_of[e.task_id], table.index(identity(e.errback))): e for e in local.errbacks}
    assert set(remote.errbacks) == set(called), "the error callbacks called differ"
    for where, errback in called.items():
        assert remote.errbacks[where].state == (SUCCESS if errback.error is None else FAILURE)
    recorded = [errback_line(e.call.args) for e in local.errbacks if e.errback.task == "t.record"]
    assert sorted(map(_key, remote.recorded)) == sorted(map(_key, recorded)), (
        "t.record was not called once per failed task and callback"
    )


def _key(value: Any) -> str:
    return json.dumps(plain(value), sort_keys=True)
