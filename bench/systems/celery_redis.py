"""Celery on Redis (kombu's Redis transport, the Redis result backend), beside celeriac.

The tasks are in bench/peers/celery_app.py. Each workload gets the pool that did best
for it on this 2-core machine (see DESCRIPTION); ``BENCH_CELERY_POOL_<WORKLOAD>`` (for
example ``BENCH_CELERY_POOL_NOOP="prefork 2"``) overrides it when comparing pools.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import celery  # noqa: F401  (not installed: this module is listed under "Systems not run")

from bench.systems import redis_common as rc

__all__ = ["DESCRIPTION", "SCENARIOS"]

SYSTEM = "celery"

POOLS = {
    # workload: (pool, concurrency, prefetch multiplier)
    "noop": ("prefork", 2, 100),
    "io": ("threads", rc.IO_IN_FLIGHT, 4),
    "latency": ("solo", 1, 1),
}


def _pool(workload: str) -> tuple[str, int, int]:
    pool, concurrency, prefetch = POOLS[workload]
    override = os.environ.get(f"BENCH_CELERY_POOL_{workload.upper()}")
    if override:
        name, _, number = override.partition(" ")
        pool, concurrency = name, int(number or concurrency)
    return pool, concurrency, prefetch


def _worker(workload: str) -> tuple[list[str], dict[str, str]]:
    pool, concurrency, prefetch = _pool(workload)
    args = ["-m", "celery", "-A", "bench.peers.celery_app", "worker", "-Q", "bench"]
    args += ["-P", pool, "-c", str(concurrency), "-l", "WARNING"]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return args, {"BENCH_CELERY_PREFETCH": str(prefetch)}


class _Client:
    """``task.delay(...)`` to publish, ``AsyncResult.get()`` for the result (the Redis
    backend's pub/sub: the producer subscribes to each task's result channel)."""

    def __init__(self) -> None:
        from bench.peers import celery_app

        self.app = celery_app.app
        self.tasks = {"noop": celery_app.noop, "sleep": celery_app.sleep}

        self._keep: list[Any] = []

    def publish(self, kind: str, *args: Any) -> Any:
        handle = self.tasks[kind].delay(*args)
        # An AsyncResult's __del__ unsubscribes from its result channel. Run by the cyclic
        # garbage collector while the same pub/sub connection is inside a call, it waits
        # for itself forever (seen here with Celery 5.6 and redis-py 5.3), so no handle
        # is let go until the run is over.
        self._keep.append(handle)
        return handle

    def wait(self, handle: Any) -> None:
        handle.get(timeout=rc.PHASE_TIMEOUT)

    def queued(self) -> int:
        with self.app.connection_for_write() as conn:
            return int(conn.default_channel.client.llen("bench"))

    def close(self) -> None:
        self._keep.clear()
        gc.collect()


def _describe(workload: str) -> str:
    pool, concurrency, prefetch = _pool(workload)
    return f"-P {pool} -c {concurrency}, prefetch x{prefetch}"


PEER = rc.Peer(SYSTEM, _worker, _Client)

DESCRIPTION = f"""\
- **Broker and results**: `Celery(broker=URL, backend=URL)` with `URL =
  {rc.redis_url(SYSTEM)}`: kombu's Redis transport (lists, BRPOP) and the Redis result
  backend (`SET` + `PUBLISH` of each result). JSON, no task events, no remote control,
  `acks_late` off (the default), worker started `--without-gossip --without-mingle
  --without-heartbeat`.
- **No-ops, end to end** (`{_describe("noop")}`): one worker (node) with a prefork pool
  of 2 processes, one per core, did best: measured at 5,000 no-ops, prefork 2 ~600-630/s,
  threads 4 ~570/s (one process), solo ~430/s. All three processes are measured.
- **I/O-bound** (`{_describe("io")}`): Celery has no `async def` tasks; the task is a
  plain `def` calling `time.sleep(0.01)`, on {rc.IO_IN_FLIGHT} pool threads so
  {rc.IO_IN_FLIGHT} are in flight. The gevent pool (`-P gevent -c 100`, sleep patched to
  be cooperative) did worse here: ~200/s against ~410/s.
- **Latency** (`{_describe("latency")}`): no pool, the least work per task. (The threads
  pool with prefetch 1 stopped consuming after a few hundred tasks here, a message left
  in the queue.)
- **Producer**: `task.delay()` in a loop, then `result.get()` for each in turn. The
  result backend subscribes to the task's result channel at publish time and
  `get()` waits on that pub/sub connection. The producer keeps every `AsyncResult`
  until the run is over (see `_Client.publish`: letting them go could deadlock).
"""

SCENARIOS = rc.peer_scenarios(
    PEER,
    {"e2e": _describe("noop"), "io": _describe("io"), "latency": _describe("latency")},
)
