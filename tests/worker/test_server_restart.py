"""A worker and a producer ride out a restart of their Redis server."""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from tests.apps.basic import make_app
from tests.brokers.server_redis import RedisServer, redis_server_binary
from tests.worker.helpers import lines, worker_process

pytestmark = pytest.mark.anyio


async def test_tasks_published_before_during_and_after_a_redis_restart_all_run(
    tmp_path: Path,
) -> None:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is not installed")
    log = tmp_path / "effects"
    with RedisServer(tmp_path, binary) as server:
        app = make_app(server.url)
        with worker_process(server.url, "--grace", "5"):
            async with app:
                before = [app.send_task("basic.record", (str(log), f"a{i}")) for i in range(100)]
                with anyio.fail_after(30):
                    assert [await r for r in before] == [f"a{i}" for i in range(100)]
                await anyio.to_thread.run_sync(server.stop)
                during = [app.send_task("basic.record", (str(log), f"b{i}")) for i in range(100)]
                await anyio.sleep(3)
                await anyio.to_thread.run_sync(server.start)
                after = [app.send_task("basic.record", (str(log), f"c{i}")) for i in range(100)]
                with anyio.fail_after(60):
                    assert [await r for r in during] == [f"b{i}" for i in range(100)]
                    assert [await r for r in after] == [f"c{i}" for i in range(100)]
    done = lines(log)
    expected = {f"{p}{i}" for p in "abc" for i in range(100)}
    assert set(done) == expected
