"""Producer and worker as separate processes: nothing is lost when a worker dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from tests.apps.basic import make_app
from tests.worker.helpers import (
    lines,
    spawn_worker,
    stop,
    wait_for_workers,
    wait_ready,
    worker_process,
)

from celeriac import App

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("worker_loop", ["asyncio", "trio"])
async def test_producer_and_worker_processes_exchange_every_kind(
    sqlite_url: str, worker_loop: str
) -> None:
    app = make_app(sqlite_url)
    with worker_process(sqlite_url, loop=worker_loop) as worker:
        async with app:
            with anyio.fail_after(30):
                assert await app.send_task("basic.add", (20, 22)) == 42
                assert await app.send_task("basic.mul", (6, 7)) == 42
                thread_pid = await app.send_task("basic.pid")
                boxed_pid = await app.send_task("basic.boxed_pid")
    assert thread_pid == worker.pid
    assert boxed_pid not in (worker.pid, os.getpid())
    assert worker.returncode == 0


def test_sync_producer_process(sqlite_url: str, tmp_path: Path) -> None:
    script = tmp_path / "producer.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from tests.apps.basic import make_app
            app = make_app(sys.argv[1])
            results = [app.send_task("basic.mul", (i, 2)) for i in range(50)]
            print(sum(r.get(timeout=30) for r in results))
            """
        )
    )
    with worker_process(sqlite_url):
        out = subprocess.run(
            [sys.executable, str(script), sqlite_url], capture_output=True, timeout=60, check=False
        )
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-3000:]
    assert out.stdout.decode().strip() == str(sum(i * 2 for i in range(50)))


async def test_sigkilled_worker_loses_no_message(tmp_path: Path) -> None:
    broker = f"sqlite:///{tmp_path / 'q.db'}?visibility_timeout=1"
    app = make_app(broker)
    log = tmp_path / "effects"
    count = 30
    async with app:
        results = [app.send_task("basic.sleep", (0.4, str(log), f"t{i}")) for i in range(count)]
        first = spawn_worker(broker, "--prefetch", "10", "--async-concurrency", "5")

        def running() -> set[str]:
            effects = lines(log)
            started = {line.split()[1] for line in effects if line.startswith("start")}
            return started - {line.split()[1] for line in effects if line.startswith("end")}

        # Kill it in the middle of things: some tasks done, some running.
        with anyio.fail_after(20):
            while sum(line.startswith("end") for line in lines(log)) < 5 or not running():
                await anyio.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait()
        in_flight = {line.split()[1] for line in lines(log) if line.startswith("start")} - {
            line.split()[1] for line in lines(log) if line.startswith("end")
        }
        assert in_flight, "the kill should have interrupted running tasks"
        with worker_process(broker):
            with anyio.fail_after(40):
                values = [await r for r in results]
    assert values == [f"t{i}" for i in range(count)]
    ended = {line.split()[1] for line in lines(log) if line.startswith("end")}
    assert ended == {f"t{i}" for i in range(count)}
    # The interrupted ones ran again, to completion, in the second worker.
    second_ends = [
        line for line in lines(log) if line.startswith("end") and int(line.split()[2]) != first.pid
    ]
    assert in_flight <= {line.split()[1] for line in second_ends}


async def test_sigterm_finishes_running_tasks_and_returns_the_rest(tmp_path: Path) -> None:
    broker = f"sqlite:///{tmp_path / 'q.db'}"
    app = make_app(broker)
    log = tmp_path / "effects"
    async with app:
        results = [app.send_task("basic.sleep", (0.5, str(log), f"t{i}")) for i in range(40)]
        worker = spawn_worker(
            broker, "--async-concurrency", "4", "--prefetch", "20", "--grace", "10"
        )
        with anyio.fail_after(20):
            while not any(line.startswith("start") for line in lines(log)):
                await anyio.sleep(0.02)
        worker.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(worker.wait, 30) == 0
        started = {line.split()[1] for line in lines(log) if line.startswith("start")}
        ended = {line.split()[1] for line in lines(log) if line.startswith("end")}
        assert started == ended, "a graceful stop lets every running task finish"
        assert len(ended) < 40, "the worker should have stopped before finishing everything"
        with worker_process(broker):
            with anyio.fail_after(40):
                values = [await r for r in results]
    assert values == [f"t{i}" for i in range(40)]
    tags = [line.split()[1] for line in lines(log) if line.startswith("end")]
    assert sorted(tags) == sorted(f"t{i}" for i in range(40)), "each task ran exactly once"


async def test_status_shows_queues_and_live_workers(sqlite_url: str) -> None:
    app: App = make_app(sqlite_url)
    async with app:
        for _ in range(3):
            app.send_task("basic.add", (1, 1), queue="elsewhere")
        with worker_process(sqlite_url, "-n", "w-status"):
            await wait_for_workers(app, 1)
            out = await anyio.run_process(
                [sys.executable, "-m", "celeriac", "status", "tests.apps.basic:app", "--json"],
                env=dict(os.environ, CELERIAC_BROKER=sqlite_url),
            )
    import json

    status = json.loads(out.stdout)
    assert status["queues"]["elsewhere"]["ready"] == 3
    assert [w["name"] for w in status["workers"]] == ["w-status"]


def test_call_command_prints_the_result(sqlite_url: str) -> None:
    env = dict(os.environ, CELERIAC_BROKER=sqlite_url)
    with worker_process(sqlite_url):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "celeriac",
                "call",
                "tests.apps.basic:app",
                "basic.add",
                "2",
                "40",
            ],
            env=env,
            capture_output=True,
            timeout=60,
        )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == "42"


async def test_worker_stops_cleanly_on_sigint(sqlite_url: str, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    worker = spawn_worker(sqlite_url, log=log)
    await wait_ready(worker, log)
    worker.send_signal(signal.SIGINT)
    assert stop(worker) == 0


def test_many_producers_and_workers_share_one_sqlite_file(tmp_path: Path) -> None:
    """Two producer and two worker processes: every task runs, none twice, none lost."""
    broker = f"sqlite:///{tmp_path / 'q.db'}"
    effects = tmp_path / "effects"
    script = tmp_path / "producer.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from tests.apps.basic import make_app
            app = make_app(sys.argv[1])
            name, path, count = sys.argv[2], sys.argv[3], int(sys.argv[4])
            results = [app.send_task("basic.record", (path, f"{name}-{i}")) for i in range(count)]
            assert [r.get(timeout=60) for r in results] == [f"{name}-{i}" for i in range(count)]
            print("ok")
            """
        )
    )
    per_producer = 1000
    with worker_process(broker, "-n", "w1"), worker_process(broker, "-n", "w2"):
        producers = [
            subprocess.Popen(
                [sys.executable, str(script), broker, name, str(effects), str(per_producer)],
                stdout=subprocess.PIPE,
            )
            for name in ("p1", "p2")
        ]
        outputs = [p.communicate(timeout=120)[0].decode().strip() for p in producers]
    assert outputs == ["ok", "ok"]
    tags = lines(effects)
    expected = {f"{p}-{i}" for p in ("p1", "p2") for i in range(per_producer)}
    assert set(tags) == expected, "lost: " + ", ".join(sorted(expected - set(tags))[:10])
    assert len(tags) == len(expected), "some task ran twice"
