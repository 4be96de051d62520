"""Every primitive and nesting, run on real worker processes, named one by one.

Each test runs on two ``celeriac worker`` processes (asyncio and trio) on SQLite and
on Redis, from an asyncio and a trio producer. Besides the value each one names, every
run is checked against :func:`~celeriac.canvas.run_local` as the generated canvases
are (:func:`tests.router.compare.assert_same`): the task steps that ran and the error
callbacks called.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pytest
from tests.router.canvas_app import make_app
from tests.router.cluster import Cluster, drained, outcomes
from tests.router.compare import Remote, assert_same, run_both

from celeriac import App, GroupFailed, Signature, Task, chain, chord, group
from celeriac.canvas import Canvas, GroupFailure, TaskFailure, step_task_id

pytestmark = pytest.mark.slow


class Tasks:
    """The test tasks of an app, as ``Task`` objects (so ``.s()`` knows the app)."""

    def __init__(self, app: App) -> None:
        self.add: Task[..., Any] = app.tasks["t.add"]
        self.echo: Task[..., Any] = app.tasks["t.echo"]
        self.odd: Task[..., Any] = app.tasks["t.odd"]
        self.fail: Task[..., Any] = app.tasks["t.fail"]
        self.record: Task[..., Any] = app.tasks["t.record"]


@pytest.fixture
def t(producer: App) -> Tasks:
    """The producer's tasks."""
    return Tasks(producer)


async def run(app: App, cluster: Cluster, canvas: Canvas) -> Remote:
    """Run ``canvas`` on the workers; check it against the local run; return the run."""
    local, remote = await run_both(app, cluster, canvas)
    assert_same(local, remote)
    return remote


# -- what each primitive gives ------------------------------------------------------------


@pytest.mark.anyio
async def test_a_chain_started_with_delay_gives_each_result_first_to_the_next(
    producer: App, canvas_cluster: Cluster, t: Tasks
) -> None:
    result = await (t.add.s(4, 4) | t.add.s(8) | t.echo.s("end")).delay_async()
    with anyio.fail_after(30):
        assert await result.get_async() == [16, "end"]


@pytest.mark.anyio
async def test_a_group_gives_its_results_in_member_order(
    producer: App, canvas_cluster: Cluster, t: Tasks
) -> None:
    remote = await run(producer, canvas_cluster, group(t.echo.s(i) for i in range(20)))
    assert remote.value == [[i] for i in range(20)]


@pytest.mark.anyio
async def test_a_chord_runs_its_body_once_with_the_header_results_in_order(
    producer: App, canvas_cluster: Cluster, t: Tasks
) -> None:
    canvas = chord([t.add.s(i, i) for i in range(8)], t.echo.s("body"))
    remote = await run(producer, canvas_cluster, canvas)
    assert remote.value == [[0, 2, 4, 6, 8, 10, 12, 14], "body"]
    assert remote.step(8) in remote.tasks  # the body, after its 8 header steps


@pytest.mark.anyio
async def test_a_map_runs_one_step_per_item(
    producer: App, canvas_cluster: Cluster, t: Tasks
) -> None:
    remote = await run(producer, canvas_cluster, t.echo.map([1, 2, 3]))
    assert remote.value == [[1], [2], [3]]
    assert len(remote.tasks) == 3


@pytest.mark.anyio
async def test_a_starmap_unpacks_each_item(
    producer: App, canvas_cluster: Cluster, t: Tasks
) -> None:
    remote = await run(producer, canvas_cluster, t.echo.starmap([(1, 2), (3, 4), ()]))
    assert remote.value == [[1, 2], [3, 4], []]
    assert len(remote.tasks) == 3


@pytest.mark.anyio
async def test_chunks_run_n_calls_per_step(
    producer: App, canvas_cluster: Cluster, t: Tasks
) -> None:
    remote = await run(producer, canvas_cluster, t.echo.chunks([(1,), (2,), (3,)], 2))
    assert remote.value == [[[1], [2]], [[3]]]
    assert len(remote.tasks) == 2


# -- nesting ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_chain_of_groups_feeds_each_group_the_list_before_it(
    producer: App, canvas_cluster: Cluster, t: Tasks
) -> None:
    canvas = chain(t.add.s(1, 1), group(t.add.s(1), t.add.s(2)), group(t.echo.s(), t.add.s(10)))
    remote = await run(producer, canvas_cluster, canvas)
    assert remote.value == [[[3, 4]], 17]


@pytest.mark.anyio
async def test_a_chord_inside_a_chain(producer: App, canvas_cluster: Cluster, t: Tasks) -> None:
    canvas = chain(t.add.s(1, 1), chord([t.add.s(1), t.add.s(2)], t.add.s(100)), t.echo.s())
    remote = await run(producer, canvas_cluster, canvas)
    assert remote.value == [107]


@pytest.mark.anyio
async def test_a_group_of_chains(producer: App, canvas_cluster: Cluster, t: Tasks) -> None:
    canvas = group(t.add.s(1, 1) | t.add.s(1), t.echo.s("a") | t.echo.s("b"), t.echo.s("c"))
    remote = await run(producer, canvas_cluster, canvas)
    assert remote.value == [3, [["a"], "b"], ["c"]]


@pytest.mark.anyio
async def test_an_immutable_signature_ignores_the_previous_result(
    producer: App, canvas_cluster: Cluster, t: Tasks
) -> None:
    remote = await run(producer, canvas_cluster, t.add.s(1, 1) | t.add.si(5, 5) | t.echo.s())
    assert remote.value == [10]


# -- failures -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_failing_step_stops_its_chain(
    producer: App, canvas_cluster: Cluster, t: Tasks
) -> None:
    canvas = chain(t.add.s(1, 1), t.fail.s(), t.add.s(1), t.echo.s())
    remote = await run(producer, canvas_cluster, canvas)
    assert isinstance(remote.error, ValueError)
    assert str(remote.error) == "fail: 2"
    assert set(remote.tasks) == {remote.step(0), remote.step(1)}, "steps 2 and 3 never run"


@pytest.mark.anyio
async def test_a_chord_whose_header_fails_does_not_run_its_body(
    producer: App, canvas_cluster: Cluster, t: Tasks
) -> None:
    canvas = chord([t.add.s(1), t.fail.s(2), t.odd.s(3), t.add.s(4)], t.echo.s())
    remote = await run(producer, canvas_cluster, canvas)
    assert isinstance(remote.error, GroupFailed)
    assert [m.index for m in remote.error.failure.failures] == [1, 2]
    assert set(remote.tasks) == {remote.step(n) for n in range(4)}, "the body never runs"


@pytest.mark.anyio
async def test_a_group_reports_which_members_failed_and_why(
    producer: App, canvas_cluster: Cluster, t: Tasks
) -> None:
    canvas = group(
        t.add.s(1),
        t.fail.s(2),
        t.add.s(3),
        t.add.s(1) | t.odd.s(2),  # steps 3 and 4
        group(t.fail.s(5), t.add.s(6)),  # steps 5 and 6
    )
    remote = await run(producer, canvas_cluster, canvas)
    assert isinstance(remote.error, GroupFailed)
    failure = remote.error.failure
    assert failure.size == 5
    assert [m.index for m in failure.failures] == [1, 3, 4]
    second, chained, inner = (m.failure for m in failure.failures)
    assert isinstance(second, TaskFailure)
    assert (second.step, second.task_id, second.task) == (1, remote.step(1), "t.fail")
    assert (second.error.type, second.error.message) == ("ValueError", "fail: 2")
    assert isinstance(chained, TaskFailure)
    assert (chained.step, chained.task, chained.error.message) == (4, "t.odd", "odd: 3")
    assert isinstance(inner, GroupFailure)
    assert (inner.size, [m.index for m in inner.failures]) == (2, [0])


@pytest.mark.anyio
async def test_error_callbacks_are_called_once_per_failed_task_with_its_id_and_error(
    producer: App, canvas_cluster: Cluster, t: Tasks
) -> None:
    canvas = group(
        t.fail.s(1),
        t.add.s(2),
        t.fail.s(3).on_error(t.record.si("own")),
        t.add.s(4) | t.fail.s(),  # steps 3 and 4
    ).on_error(t.record.s("tag"))
    remote = await run(producer, canvas_cluster, canvas)
    assert isinstance(remote.error, GroupFailed)

    def error(message: str) -> dict[str, Any]:
        return {"type": "ValueError", "module": "builtins", "message": message, "args": [message]}

    key = repr
    assert sorted(map(key, remote.recorded)) == sorted(
        map(
            key,
            [
                [remote.step(0), error("fail: 1"), "tag"],
                [remote.step(2), error("fail: 3"), "tag"],
                ["own"],
                [remote.step(4), error("fail: 4"), "tag"],
            ],
        )
    )


# -- sync producers ---------------------------------------------------------------------


def test_sync_get_from_threads_waits_for_whole_canvases(canvas_cluster: Cluster) -> None:
    app = make_app(canvas_cluster.url)
    t = Tasks(app)
    try:
        results = [(t.add.s(i, i) | t.echo.s(i)).delay() for i in range(8)]
        failing = chord([t.add.s(1), t.fail.s(2)], t.echo.s()).delay()
        with ThreadPoolExecutor(4) as pool:
            values = list(pool.map(lambda r: r.get(timeout=30), results))
            with pytest.raises(GroupFailed) as raised:
                pool.submit(failing.get, 30).result()
    finally:
        app.close()
    assert values == [[2 * i, i] for i in range(8)]
    assert [m.index for m in raised.value.failure.failures] == [1]


@pytest.mark.anyio
async def test_a_canvas_built_by_name_runs_on_workers_that_know_the_names(
    producer: App, canvas_cluster: Cluster
) -> None:
    add = Signature("t.add")
    canvas = chord([add.set(priority=i) for i in range(3)], Signature("t.echo", args=("x",)))
    result = await producer.start_async(chain(Signature("t.add", args=(1, 2)), canvas))
    with anyio.fail_after(30):
        assert await result.get_async() == [[3, 3, 3], "x"]
    await drained(producer)
    ids = [step_task_id(result.id, n) for n in range(5)]  # the body is step 4
    assert set(await outcomes(producer, ids)) == set(ids)
