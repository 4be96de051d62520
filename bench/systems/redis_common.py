"""What every Redis scenario shares, celeriac's and the peers': the server, one database per
system, process trees, the measured window, and the metrics each system reports.

All systems run on the same Redis server (``127.0.0.1:6379``). Each has its own
database number, emptied with ``FLUSHDB`` before every repetition (never
``FLUSHALL``: other people use the other databases of this server). The
workloads and their sizes are defined here once, so every system measures
exactly the same thing and reports it under the same ``workload`` key, which
gives the table its ``vs celeriac`` column.

A peer's worker is often more than one process (Celery's prefork children,
Dramatiq's and Taskiq's supervisor and worker process, RQ's pool): CPU time,
peak memory and CPU wait are summed over the worker's whole process tree.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.harness import (
    ManagedProcess,
    Metric,
    PeerTarget,
    RunContext,
    Scenario,
    Ticker,
    cpu_wait_seconds,
)

__all__ = [
    "AsyncClient",
    "Client",
    "DATABASES",
    "E2E_TASKS",
    "ENQUEUE_TASKS",
    "HOST",
    "IO_IN_FLIGHT",
    "IO_TASKS",
    "LATENCY_CALLS",
    "LATENCY_WARM_UP",
    "PORT",
    "SLEEP_SECONDS",
    "WARM_UP_TASKS",
    "Peer",
    "Window",
    "e2e_metrics",
    "enqueue_metrics",
    "flush",
    "io_metrics",
    "latency_metrics",
    "latency_values",
    "peer_scenarios",
    "redis_url",
    "stop_peer_worker",
    "tree_peak_rss_mib",
    "wait_until",
]

HOST = "127.0.0.1"
PORT = 6379

DATABASES = {
    "celeriac": 8,
    "celery": 9,
    "dramatiq": 10,
    "arq": 11,
    "taskiq": 12,
    "huey": 13,
    "rq": 14,
}
"""The Redis database each system uses; 0-7 and 15 are left to tests and to other people."""

SCALE = float(os.environ.get("BENCH_REDIS_SCALE", "1"))
"""Multiplies the task counts below: ``BENCH_REDIS_SCALE=0.1`` for a quick try of a change
(the labels give the real counts; results at another scale are not comparable)."""

E2E_TASKS = int(20_000 * SCALE)
"""No-op tasks timed end to end (first publish -> last result)."""
ENQUEUE_TASKS = int(20_000 * SCALE)
WARM_UP_TASKS = 500
"""Tasks run through a fresh worker before the clock starts (imports, connections, caches)."""
IO_TASKS = int(5_000 * SCALE)
IO_IN_FLIGHT = 100
"""Every system's worker is configured to run at most (and, with enough queued, exactly) this
many of the I/O-bound tasks at once: the best possible is IO_IN_FLIGHT / SLEEP_SECONDS tasks/s."""
SLEEP_SECONDS = 0.010
LATENCY_CALLS = 500
LATENCY_WARM_UP = 50

PHASE_TIMEOUT = 300.0
"""Seconds a phase (warm-up, the timed batch, the latency loop) may take before the run fails."""


def redis_url(system: str) -> str:
    """``redis://127.0.0.1:6379/<the system's database>``."""
    return f"redis://{HOST}:{PORT}/{DATABASES[system]}"


def flush(system: str) -> None:
    """Empty the system's own database (``FLUSHDB``; the other databases are left alone)."""
    import redis

    client = redis.Redis(host=HOST, port=PORT, db=DATABASES[system])
    try:
        client.flushdb()
    finally:
        client.close()


def wait_until(
    what: str,
    ready: Callable[[], bool],
    timeout: float = 60.0,
    process: ManagedProcess | None = None,
) -> None:
    """Poll ``ready()`` every 50 ms until true; fail after ``timeout`` or if ``process`` dies."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None:
            process.check_alive("worker")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(0.05)


# -- process trees ---------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def tree(pid: int) -> list[int]:
    """``pid`` and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the live tree, plus what its reaped children had used."""
    ticks = 0
    for member in tree(pid):
        try:
            fields = _stat_fields(member)
        except OSError:
            continue
        # utime, stime, cutime, cstime (fields 14-17 of /proc/<pid>/stat)
        ticks += sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_peak_rss_mib(pid: int) -> float:
    """Sum of ``VmHWM`` over the tree (pages shared after a fork are counted in each process)."""
    total_kib = 0
    for member in tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def tree_cpu_wait(pid: int) -> float:
    return sum(cpu_wait_seconds(member) for member in tree(pid))


class Window:
    """The timed window of a throughput run: wall time, CPU per task, time waiting for a CPU.

    ``start()`` just before the first publish, ``stop()`` once the last result is in;
    ``values(count)`` gives ``tasks_per_s``, ``worker_cpu`` and ``producer_cpu`` (µs per
    task; the producer is this whole process, every thread included) and ``cpu_wait``
    (% of the window the worker tree and the producer were runnable but not running).
    """

    def __init__(self, worker: ManagedProcess | None) -> None:
        self.worker = worker
        self.elapsed = 0.0

    def _snapshot(self) -> tuple[float, float, float]:
        worker_pid = self.worker.pid if self.worker is not None else None
        worker_cpu = tree_cpu_seconds(worker_pid) if worker_pid else 0.0
        waited = cpu_wait_seconds(os.getpid())
        if worker_pid:
            waited += tree_cpu_wait(worker_pid)
        return worker_cpu, time.process_time(), waited

    def start(self) -> None:
        self._before = self._snapshot()
        self._started = time.perf_counter()

    def stop(self) -> None:
        self.elapsed = time.perf_counter() - self._started
        self._after = self._snapshot()

    def values(self, count: int) -> dict[str, float]:
        worker, producer, waited = (a - b for a, b in zip(self._after, self._before, strict=True))
        return {
            "tasks_per_s": count / self.elapsed,
            "worker_cpu": worker / count * 1e6,
            "producer_cpu": producer / count * 1e6,
            "cpu_wait": waited / self.elapsed * 100,
        }


def latency_values(samples: Sequence[float]) -> dict[str, float]:
    from bench.harness import percentile

    return {f"p{q}": percentile(samples, q) * 1000 for q in (50, 90, 99)}


def stop_peer_worker(ctx: RunContext, worker: ManagedProcess, ok: Sequence[int] = (0,)) -> None:
    """Stop a worker as its users do (SIGTERM: warm shutdown); an error if it exits otherwise."""
    code = worker.stop()
    if code not in ok:
        raise RuntimeError(f"the worker exited with code {code}:\n{worker.log_tail()}")


# -- the metrics every system reports ----------------------------------------------------


def e2e_metrics(*, celeriac: bool = False) -> list[Metric]:
    """Throughput of E2E_TASKS no-ops with one worker process, and what it cost."""
    return [
        Metric(
            "tasks_per_s",
            f"Redis end to end: {E2E_TASKS:,} no-ops, 1 worker process",
            "tasks/s",
            "redis.e2e.noop",
            peer_target=PeerTarget(2.0) if celeriac else None,
        ),
        Metric(
            "worker_cpu",
            "Redis end to end: worker CPU time per task (whole process tree)",
            "µs",
            "redis.e2e.noop.worker_cpu",
            higher_is_better=False,
            informational=True,
        ),
        Metric(
            "producer_cpu",
            "Redis end to end: producer CPU time per task (publish + get result)",
            "µs",
            "redis.e2e.noop.producer_cpu",
            higher_is_better=False,
            informational=True,
        ),
        Metric(
            "worker_rss",
            "Redis end to end: worker peak RSS (VmHWM summed over the process tree)",
            "MiB",
            "redis.e2e.noop.worker_rss",
            higher_is_better=False,
            informational=True,
        ),
        Metric(
            "cpu_wait",
            "Redis end to end: time runnable but waiting for a CPU (worker tree + producer)",
            "% of wall",
            "redis.e2e.noop.cpu_wait",
            higher_is_better=False,
            informational=True,
            decimals=1,
        ),
    ]


def enqueue_metrics() -> list[Metric]:
    return [
        Metric(
            "enqueue",
            f"Redis enqueue only: {ENQUEUE_TASKS:,} no-ops published, no worker",
            "msgs/s",
            "redis.enqueue",
            informational=True,
        )
    ]


def io_metrics(*, celeriac: bool = False) -> list[Metric]:
    label = (
        f"Redis I/O-bound: {IO_TASKS:,} tasks sleeping {SLEEP_SECONDS * 1000:.0f} ms,"
        f" {IO_IN_FLIGHT} in flight (ceiling {IO_IN_FLIGHT / SLEEP_SECONDS:,.0f}/s)"
    )
    return [
        Metric(
            "tasks_per_s",
            label,
            "tasks/s",
            "redis.e2e.sleep10ms",
            peer_target=PeerTarget(1.0) if celeriac else None,
        ),
        Metric(
            "worker_cpu",
            "Redis I/O-bound: worker CPU time per task (whole process tree)",
            "µs",
            "redis.e2e.sleep10ms.worker_cpu",
            higher_is_better=False,
            informational=True,
        ),
        Metric(
            "worker_rss",
            f"Redis I/O-bound: worker peak RSS with {IO_IN_FLIGHT} in flight (process tree)",
            "MiB",
            "redis.e2e.sleep10ms.worker_rss",
            higher_is_better=False,
            informational=True,
        ),
    ]


def latency_metrics(*, celeriac: bool = False) -> list[Metric]:
    return [
        Metric(
            f"p{q}",
            f"Redis round-trip latency p{q} (one call at a time, {LATENCY_CALLS} calls)",
            "ms",
            f"redis.latency.p{q}",
            higher_is_better=False,
            peer_target=PeerTarget(1.0) if celeriac and q == 50 else None,
            informational=q != 50,
        )
        for q in (50, 90, 99)
    ]


# -- the peers' scenarios ----------------------------------------------------------------


class Client(Protocol):
    """A peer's producer, as its users write one (a blocking client).

    ``publish("noop")`` or ``publish("sleep", seconds)`` sends one task and returns
    whatever the system gives to get its result later; ``wait`` gets that result (the
    system's idiomatic way); ``queued`` counts the messages waiting in Redis.
    """

    def publish(self, kind: str, *args: Any) -> Any: ...

    def wait(self, handle: Any) -> None: ...

    def queued(self) -> int: ...

    def close(self) -> None: ...


class AsyncClient(Protocol):
    """As :class:`Client`, for the asyncio peers (arq, Taskiq)."""

    async def publish(self, kind: str, *args: Any) -> Any: ...

    async def wait(self, handle: Any) -> None: ...

    async def queued(self) -> int: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Peer:
    """How to run one peer: its worker command per workload, and its producer.

    ``worker(workload)`` gives the argv after the interpreter (``-m celery ...``) and
    extra environment for ``workload`` in ``noop``, ``io``, ``latency``. ``client()``
    opens a producer (a :class:`Client`, or for ``is_async`` an awaitable giving an
    :class:`AsyncClient`). ``exit_codes``: what a worker may exit with on SIGTERM.
    """

    system: str
    worker: Callable[[str], tuple[list[str], dict[str, str]]]
    client: Callable[[], Any]
    is_async: bool = False
    exit_codes: tuple[int, ...] = (0,)
    ready: Callable[[ManagedProcess], bool] | None = None
    """Optional: whether the worker is up (else the warm-up tasks tell)."""


def _start(ctx: RunContext, peer: Peer, workload: str) -> ManagedProcess:
    args, env = peer.worker(workload)
    process = ctx.spawn("worker", [sys.executable, *args], ctx.subprocess_env(**env))
    ctx.progress(f"{peer.system} worker started (pid {process.pid}): {' '.join(args)}")
    if peer.ready is not None:
        wait_until(f"the {peer.system} worker", lambda: peer.ready(process), process=process)
    return process


def _sync_enqueue(peer: Peer) -> Callable[[RunContext], dict[str, float]]:
    def repetition(ctx: RunContext) -> dict[str, float]:
        flush(peer.system)
        client = peer.client()
        try:
            client.publish("noop")  # connect, and load what the first publish loads
            started = time.perf_counter()
            for _ in range(ENQUEUE_TASKS):
                client.publish("noop")
            elapsed = time.perf_counter() - started
            queued = client.queued() - 1  # the first one
        finally:
            client.close()
        if queued != ENQUEUE_TASKS:
            raise RuntimeError(f"{ENQUEUE_TASKS} published but {queued} in the queue")
        return {"enqueue": ENQUEUE_TASKS / elapsed}

    return repetition


def _async_enqueue(peer: Peer) -> Callable[[RunContext], dict[str, float]]:
    def repetition(ctx: RunContext) -> dict[str, float]:
        flush(peer.system)

        async def main() -> tuple[float, int]:
            client = await peer.client()
            try:
                await client.publish("noop")
                started = time.perf_counter()
                for _ in range(ENQUEUE_TASKS):
                    await client.publish("noop")
                elapsed = time.perf_counter() - started
                return elapsed, await client.queued() - 1  # the first one
            finally:
                await client.close()

        elapsed, queued = _run(main)
        if queued != ENQUEUE_TASKS:
            raise RuntimeError(f"{ENQUEUE_TASKS} published but {queued} in the queue")
        return {"enqueue": ENQUEUE_TASKS / elapsed}

    return repetition


def _run(fn: Callable[[], Any]) -> Any:
    from bench.systems.celeriac_common import run_async

    return run_async(fn)


def _throughput(
    peer: Peer, workload: str, kind: str, count: int, args: Sequence[Any], warm_up: int
) -> Callable[[RunContext], dict[str, float]]:
    """Publish ``count`` tasks as fast as the client goes, then wait for each result in turn."""

    def repetition(ctx: RunContext) -> dict[str, float]:
        flush(peer.system)
        worker = _start(ctx, peer, workload)
        window = Window(worker)
        if peer.is_async:

            async def main() -> None:
                client = await peer.client()
                try:
                    for handle in [await client.publish(kind, *args) for _ in range(warm_up)]:
                        await client.wait(handle)
                    worker.check_alive("worker")
                    ctx.progress(f"worker warmed up ({warm_up} tasks); timing {count:,}")
                    window.start()
                    handles = [await client.publish(kind, *args) for _ in range(count)]
                    ticker = Ticker(ctx, "results", count)
                    for done, handle in enumerate(handles):
                        await client.wait(handle)
                        if done % 500 == 0:
                            ticker.poll(done)
                    window.stop()
                finally:
                    await client.close()

            _run(main)
        else:
            client = peer.client()
            try:
                for handle in [client.publish(kind, *args) for _ in range(warm_up)]:
                    client.wait(handle)
                worker.check_alive("worker")
                ctx.progress(f"worker warmed up ({warm_up} tasks); timing {count:,}")
                window.start()
                handles = [client.publish(kind, *args) for _ in range(count)]
                ticker = Ticker(ctx, "results", count)
                for done, handle in enumerate(handles):
                    client.wait(handle)
                    if done % 500 == 0:
                        ticker.poll(done)
                window.stop()
                del handles
            finally:
                client.close()
        worker.check_alive("worker")
        values = window.values(count)
        values["worker_rss"] = tree_peak_rss_mib(worker.pid)
        stop_peer_worker(ctx, worker, peer.exit_codes)
        return values

    return repetition


def _latency(peer: Peer) -> Callable[[RunContext], dict[str, float]]:
    """One task at a time: publish, get its result, next."""

    def repetition(ctx: RunContext) -> dict[str, float]:
        flush(peer.system)
        worker = _start(ctx, peer, "latency")
        samples: list[float] = []
        ticker = Ticker(ctx, "round trips", LATENCY_CALLS)
        if peer.is_async:

            async def main() -> None:
                client = await peer.client()
                try:
                    for _ in range(LATENCY_WARM_UP):
                        await client.wait(await client.publish("noop"))
                    for index in range(LATENCY_CALLS):
                        started = time.perf_counter()
                        await client.wait(await client.publish("noop"))
                        samples.append(time.perf_counter() - started)
                        ticker.poll(index)
                finally:
                    await client.close()

            _run(main)
        else:
            client = peer.client()
            try:
                for _ in range(LATENCY_WARM_UP):
                    client.wait(client.publish("noop"))
                for index in range(LATENCY_CALLS):
                    started = time.perf_counter()
                    client.wait(client.publish("noop"))
                    samples.append(time.perf_counter() - started)
                    ticker.poll(index)
            finally:
                client.close()
        worker.check_alive("worker")
        stop_peer_worker(ctx, worker, peer.exit_codes)
        return latency_values(samples)

    return repetition


def peer_scenarios(peer: Peer, how: Mapping[str, str]) -> list[Scenario]:
    """The four Redis scenarios for ``peer``; ``how`` says, per workload, how it runs
    (``e2e``, ``io``, ``latency``: shown in the scenario's title and in ``--list``)."""
    system = peer.system
    enqueue = _async_enqueue(peer) if peer.is_async else _sync_enqueue(peer)
    return [
        Scenario(
            f"{system}-e2e",
            system,
            f"{system} on Redis, {E2E_TASKS:,} no-ops: {how['e2e']}",
            tuple(e2e_metrics()),
            _throughput(peer, "noop", "noop", E2E_TASKS, (), WARM_UP_TASKS),
            group="redis-e2e",
        ),
        Scenario(
            f"{system}-enqueue",
            system,
            f"{system} on Redis, publish {ENQUEUE_TASKS:,} no-ops, no worker",
            tuple(enqueue_metrics()),
            enqueue,
            group="redis-enqueue",
        ),
        Scenario(
            f"{system}-io",
            system,
            f"{system} on Redis, {IO_TASKS:,} {SLEEP_SECONDS * 1000:.0f} ms sleeps: {how['io']}",
            tuple(io_metrics()),
            _throughput(peer, "io", "sleep", IO_TASKS, (SLEEP_SECONDS,), 200),
            group="redis-io",
        ),
        Scenario(
            f"{system}-latency",
            system,
            f"{system} on Redis, one round trip at a time: {how['latency']}",
            tuple(latency_metrics()),
            _latency(peer),
            group="redis-latency",
        ),
    ]
