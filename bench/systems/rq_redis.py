"""RQ on Redis, beside celeriac. The job functions are in bench/peers/rq_tasks.py."""

from __future__ import annotations

import os
from typing import Any

import rq  # noqa: F401  (not installed: this module is listed under "Systems not run")

from bench.systems import redis_common as rc

__all__ = ["DESCRIPTION", "SCENARIOS"]

SYSTEM = "rq"

IO_POOL = int(os.environ.get("BENCH_RQ_IO_POOL") or rc.IO_IN_FLIGHT)


def _worker(workload: str) -> tuple[list[str], dict[str, str]]:
    url = rc.redis_url(SYSTEM)
    common = ["-w", "rq.worker.SimpleWorker", "--url", url, "--logging_level", "WARNING"]
    if workload == "io":
        pool = ["-m", "rq.cli", "worker-pool", "-n", str(IO_POOL), "-w", "rq.worker.SimpleWorker"]
        return [*pool, "--url", url, "-l", "WARNING", "bench"], {}
    return ["-m", "rq.cli", "worker", *common, "--disable-job-desc-logging", "bench"], {}


class _Client:
    """``queue.enqueue(fn)`` to publish, ``job.latest_result(timeout=...)`` for the result
    (RQ 2+: a blocking XREAD on the job's result stream)."""

    def __init__(self) -> None:
        from redis import Redis
        from rq import Queue

        from bench.peers import rq_tasks

        self.redis = Redis.from_url(rc.redis_url(SYSTEM))
        self.queue = Queue("bench", connection=self.redis)
        self.functions = {"noop": rq_tasks.noop, "sleep": rq_tasks.sleep}

    def publish(self, kind: str, *args: Any) -> Any:
        return self.queue.enqueue(self.functions[kind], *args)

    def wait(self, handle: Any) -> None:
        from rq.results import Result

        result = handle.latest_result(timeout=int(rc.PHASE_TIMEOUT))
        if result is None or result.type != Result.Type.SUCCESSFUL:
            raise RuntimeError(f"job {handle.id}: no successful result ({result!r})")

    def queued(self) -> int:
        return int(self.queue.count)

    def close(self) -> None:
        self.redis.close()


PEER = rc.Peer(SYSTEM, _worker, _Client)

DESCRIPTION = f"""\
- **Broker and results**: RQ's own layout on `{rc.redis_url(SYSTEM)}` (a list per queue, a
  hash per job, results in a stream per job); pickle (RQ's default).
- **No-ops and latency**: one `rq worker -w rq.worker.SimpleWorker bench` process.
  RQ's default worker forks a work horse process per job (a few ms each); SimpleWorker
  runs jobs in the worker process itself, RQ's fastest setting for short jobs.
- **I/O-bound**: RQ runs one job at a time per worker process (an `async def` job is
  run with `asyncio.run`, alone), so the closest equivalent of {rc.IO_IN_FLIGHT} in
  flight is `rq worker-pool -n {IO_POOL} -w rq.worker.SimpleWorker`: {IO_POOL} worker
  processes, each calling `time.sleep(0.01)`.
- **Producer**: `queue.enqueue(fn)` in a loop, then `job.latest_result(timeout=...)` for
  each in turn.
"""

SCENARIOS = rc.peer_scenarios(
    PEER,
    {
        "e2e": "1 SimpleWorker process",
        "io": f"worker-pool -n {IO_POOL} (SimpleWorker)",
        "latency": "1 SimpleWorker process",
    },
)
