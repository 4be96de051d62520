"""Fixtures of the distributed canvas tests: worker processes shared by the package."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from tests.router.canvas_app import make_app
from tests.router.cluster import BROKERS, Cluster, cluster

from celeriac import App


@pytest.fixture(scope="package", params=BROKERS)
def canvas_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Two worker processes (one on asyncio, one on trio) on a broker of their own,
    started once for every test of the package on that broker."""
    directory = tmp_path_factory.mktemp(f"canvas-{request.param}")
    with cluster(str(request.param), directory) as running:
        yield running
    codes = [process.returncode for process in running.workers]
    assert codes == [0, 0], f"worker exit codes {codes}: see {running.logs}"


@pytest.fixture
async def producer(canvas_cluster: Cluster) -> AsyncIterator[App]:
    """The canvas app on the cluster's broker, open in the test's event loop."""
    app = make_app(canvas_cluster.url)
    async with app:
        yield app
