"""Global limits across worker processes, on Redis and PostgreSQL (the issue's proof).

Four worker processes share a global concurrency limit of 2: recorded start and end
times never overlap more than twice. A global rate limit of 20/s across the same
four workers starts 20 (±1) runs a second over the issue's 30 s (600 runs; every
whole second 20±2, allowing for start jitter), on Redis and on PostgreSQL at the
same time (eight workers in all) so that the test's wall time stays near one run's;
a failure says which store it happened on.
"""

from __future__ import annotations

import contextlib
import subprocess
from bisect import bisect_left
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from tests.brokers._shared import POSTGRES_URL, postgres_schema, redis_namespace, side_by_side
from tests.worker.helpers import spawn_worker, stop, wait_for_workers
from tests.worker.limits_app import build

from celeriac.testing.conformance import with_options

pytestmark = pytest.mark.anyio

WORKERS = 4
STORES = ("redis", "postgres")
RATE = 20  # limits.paced's global rate limit, per second
RUNS = 30 * RATE  # the 30 s


@contextlib.contextmanager
def namespace(store: str) -> Iterator[str]:
    """A broker URL with a namespace of its own on ``store`` (Redis or PostgreSQL)."""
    if store == "redis":
        with redis_namespace() as url:
            yield url
    else:
        with postgres_schema() as schema:
            yield with_options(POSTGRES_URL, schema=schema)


@pytest.fixture(params=STORES)
def broker(request: pytest.FixtureRequest) -> Iterator[str]:
    """A broker URL with a namespace of its own on Redis or PostgreSQL."""
    with namespace(request.param) as url:
        yield url


@pytest.fixture
def brokers() -> Iterator[dict[str, str]]:
    """A broker URL with a namespace of its own on each store, for runs side by side."""
    with contextlib.ExitStack() as stack:
        yield {store: stack.enter_context(namespace(store)) for store in STORES}


@contextlib.asynccontextmanager
async def workers(broker: str, log: Path, *extra: str) -> AsyncIterator[None]:
    """``WORKERS`` worker processes on ``broker`` for the block; each must exit 0 after it."""
    processes = [
        spawn_worker(broker, *extra, app="tests.worker.limits_app:app", log=log)
        for _ in range(WORKERS)
    ]
    codes: list[int] = []
    try:
        yield
    finally:
        # In threads: a run on another store goes on in this loop meanwhile.
        async with anyio.create_task_group() as tg:
            for p in processes:
                tg.start_soon(_stop, p, codes)
    if codes != [0] * WORKERS:
        raise AssertionError(f"exit codes {codes}; {(await anyio.Path(log).read_text())[-3000:]}")


async def _stop(process: subprocess.Popen[bytes], codes: list[int]) -> None:
    codes.append(await anyio.to_thread.run_sync(stop, process, abandon_on_cancel=False))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the workers are separate processes; one producer loop is enough


async def test_four_workers_never_run_more_than_the_global_limit(
    broker: str, tmp_path: Path
) -> None:
    record = tmp_path / "record"
    app = build(broker)
    async with app:
        results = [app.send_task("limits.limited", (str(record),)) for _ in range(60)]
        async with workers(broker, tmp_path / "workers.log"):
            with anyio.fail_after(120):
                for r in results:
                    await r
    events = []
    for line in record.read_text().splitlines():
        what, at = line.split()
        events.append((float(at), 1 if what == "start" else -1))
    running = most = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):  # ends first on ties
        running += change
        most = max(most, running)
    assert len(events) == 120
    assert most == 2


@pytest.mark.slow
async def test_a_global_rate_limit_holds_across_four_workers(
    brokers: dict[str, str], tmp_path: Path
) -> None:
    async def proof(store: str, broker: str) -> None:
        starts = await paced_runs(broker, tmp_path / f"{store}.record", tmp_path / f"{store}.log")
        assert len(starts) == RUNS
        # The store hands out one slot per 50 ms (GCRA, burst 1), and a run starts at
        # its slot plus its worker's wake-up, which on this 2-core machine (8 workers,
        # 2 producers, Redis and PostgreSQL) can be tens of ms. So windows are checked
        # with that much slack: no 0.9 s window of starts holds more than 21 (slots
        # alone: 19; a burst at a window edge, as a fixed-window limiter gives, would
        # put about 40 there).
        busiest = max(bisect_left(starts, t + 0.9) - i for i, t in enumerate(starts))
        assert busiest <= RATE + 1, busiest
        # 20 ± 1 a second on average, from the first start to the last.
        elapsed = starts[-1] - starts[0]
        assert (RUNS - 1) / (RATE + 1) <= elapsed <= (RUNS - 1) / (RATE - 1), elapsed
        # And in every whole second of the clock between the first and the last, give
        # or take the one start a late wake-up moves across a second's edge.
        per_second = Counter(int(t) for t in starts)
        seconds = range(int(starts[0]) + 1, int(starts[-1]))
        off = {s: per_second[s] for s in seconds if not RATE - 2 <= per_second[s] <= RATE + 2}
        assert not off, f"seconds with other than {RATE}±2 starts: {off}"

    await side_by_side(proof, brokers)


async def paced_runs(broker: str, record: Path, log: Path) -> list[float]:
    """Run ``RUNS`` paced tasks on four worker processes; their start times, in order."""
    app = build(broker)
    # A small prefetch, so that all four workers share the runs (with the default, 256,
    # two took most and one none); all four up before anything is published, so that
    # the limit is measured, not the workers' start-up.
    async with app, workers(broker, log, "--prefetch", "50"):
        await wait_for_workers(app, WORKERS, timeout=30)
        results = [app.send_task("limits.paced", (str(record),)) for _ in range(RUNS)]
        with anyio.fail_after(60):
            for r in results:
                await r
    runs = [line.split() for line in (await anyio.Path(record).read_text()).splitlines()]
    assert len({pid for _, pid in runs}) == WORKERS, "all four workers ran some"
    return sorted(float(at) for at, _ in runs)


async def test_a_dead_workers_slot_comes_back_after_its_lease(tmp_path: Path) -> None:
    # SQLite: the broker file is the coordinator too, shared by the worker processes.
    broker = f"sqlite:///{tmp_path / 'q.db'}?visibility_timeout=1"
    record, log = tmp_path / "record", tmp_path / "workers.log"
    app = build(broker)
    async with app:
        first = app.send_task("limits.hold", (str(record), 3.0))  # takes the only slot
        doomed = spawn_worker(broker, app="tests.worker.limits_app:app", log=log)
        with anyio.fail_after(30):
            while not record.exists():
                await anyio.sleep(0.05)
        doomed.kill()  # SIGKILL: its slot is never released, only its lease can expire
        doomed.wait()
        second = app.send_task("limits.hold", (str(record), 0.0))
        async with workers(broker, log):
            with anyio.fail_after(60):
                await second  # runs only once the dead worker's lease on the slot ran out
                await first  # redelivered (its message's lease ran out too) and run again
    starts = [float(line.split()[1]) for line in record.read_text().splitlines()]
    assert len(starts) == 3  # the killed run, its rerun, and the second task
    assert min(starts[1:]) - starts[0] >= 1.5  # nothing ran before the dead slot's lease ended
