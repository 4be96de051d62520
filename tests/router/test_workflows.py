"""A declarative Workflow, started many times with different inputs on real workers.

The same validated ``Workflow`` object is started twice; each run has its own id,
its own result, and a status read from the store: every step's state by name, the
run's state. A run with a failing step reports which step failed and which were
skipped, and its result raises the step's own error.
"""

from __future__ import annotations

import anyio
import pytest

from celeriac import App
from celeriac.canvas import InvalidWorkflow, Signature, Step, Workflow

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# t.add sums every number it is given (lists included); t.odd does too, and raises
# ValueError when the sum is odd (tests/canvas/strategies.py).
PRICING = Workflow(
    "pricing",
    params=("base", "extra"),
    steps=(
        Step("base", Signature("t.add"), bind={"x": "base"}),
        Step("extra", Signature("t.add"), bind={"x": "extra"}),
        Step("check", Signature("t.odd"), after=("base", "extra")),  # odd([base, extra])
        Step("total", Signature("t.add", args=(100,)), after=("check",)),
    ),
)


async def test_one_workflow_runs_many_times_each_with_its_inputs(producer: App) -> None:
    first = await producer.start_async(PRICING, {"base": 2, "extra": 4})
    second = await producer.start_async(PRICING, {"base": 10, "extra": 20})
    assert first.id != second.id
    with anyio.fail_after(30):
        assert await first.get_async() == 106  # check(6) = 6, then 6 + 100
        assert await second.get_async() == 130
    status = await producer.workflow_status_async(first.id)
    assert status is not None
    assert status.state == "done"
    assert status.finished
    assert {name: status.state_of(name) for name in status.names} == dict.fromkeys(
        ("base", "extra", "check", "total"), "done"
    )


async def test_a_failed_step_is_reported_and_what_depends_on_it_skipped(producer: App) -> None:
    run = await producer.start_async(PRICING, {"base": 2, "extra": 3})  # 5 is odd
    with anyio.fail_after(30), pytest.raises(ValueError, match="odd: 5"):
        await run.get_async()
    status = await producer.workflow_status_async(run.id)
    assert status is not None
    assert (status.state_of("base"), status.state_of("extra")) == ("done", "done")
    assert status.state_of("check") == "failed"
    assert status.state_of("total") == "skipped"
    assert status.state == "failed"


async def test_bad_inputs_are_refused_before_anything_starts(producer: App) -> None:
    with pytest.raises(InvalidWorkflow, match="missing"):
        await producer.start_async(PRICING, {"base": 1})
    with pytest.raises(InvalidWorkflow, match="unknown"):
        await producer.start_async(PRICING, {"base": 1, "extra": 2, "tip": 3})
    assert await producer.workflow_status_async("no-such-run") is None
