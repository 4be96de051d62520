"""Generated canvases run on real worker processes mean what ``run_local`` says.

Hypothesis draws nested canvases (chains, groups, chords, maps, starmaps, chunks,
error callbacks) over the tasks of :mod:`tests.canvas.strategies`; each one runs on
two ``celeriac worker`` processes (one on asyncio, one on trio) on SQLite and on
Redis, started by an asyncio or a trio producer, and must give what
:func:`~celeriac.canvas.run_local` gives: the same value or failure, the same task
steps run with the same outcomes, the same error callbacks called once each
(:func:`tests.router.compare.assert_same`).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from tests.canvas.strategies import canvases
from tests.router.cluster import Cluster
from tests.router.compare import assert_same, run_both

from celeriac import App
from celeriac.canvas import Canvas

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


# 13 examples per producer loop: 26 canvases per broker.
@settings(
    max_examples=13,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(canvas=canvases)
async def test_workers_run_generated_canvases_as_run_local_does(
    producer: App, canvas_cluster: Cluster, canvas: Canvas
) -> None:
    local, remote = await run_both(producer, canvas_cluster, canvas)
    assert_same(local, remote)
