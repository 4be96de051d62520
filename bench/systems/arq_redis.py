"""arq on Redis, beside celeriac. The functions are in bench/peers/arq_app.py.

``BENCH_ARQ_<WORKLOAD>`` (for example ``BENCH_ARQ_NOOP="100 0.005"``: max_jobs and the
worker's poll_delay in seconds) overrides the chosen settings when comparing.
"""

from __future__ import annotations

import os
from typing import Any

import arq  # noqa: F401  (not installed: this module is listed under "Systems not run")

from bench.systems import redis_common as rc

__all__ = ["DESCRIPTION", "SCENARIOS"]

SYSTEM = "arq"

SETTINGS = {
    # workload: (max_jobs, worker poll_delay s)
    "noop": (500, 0.001),
    "io": (rc.IO_IN_FLIGHT, 0.001),
    "latency": (10, 0.001),
}
RESULT_POLL = 0.001
"""``Job.result(poll_delay=...)``: how often the producer polls for a result (default 0.5 s)."""


def _settings(workload: str) -> tuple[int, float]:
    max_jobs, poll = SETTINGS[workload]
    override = os.environ.get(f"BENCH_ARQ_{workload.upper()}")
    if override:
        first, _, second = override.partition(" ")
        max_jobs, poll = int(first), float(second or poll)
    return max_jobs, poll


def _worker(workload: str) -> tuple[list[str], dict[str, str]]:
    max_jobs, poll = _settings(workload)
    args = ["-m", "arq", "bench.peers.arq_app.WorkerSettings"]
    return args, {"BENCH_ARQ_MAX_JOBS": str(max_jobs), "BENCH_ARQ_POLL_DELAY": str(poll)}


class _Client:
    """``await pool.enqueue_job(name, ...)`` to publish, ``await job.result(poll_delay=1 ms)``."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls) -> _Client:
        from arq import create_pool
        from arq.connections import RedisSettings

        return cls(await create_pool(RedisSettings.from_dsn(rc.redis_url(SYSTEM))))

    async def publish(self, kind: str, *args: Any) -> Any:
        return await self.pool.enqueue_job(kind, *args, _queue_name="bench")

    async def wait(self, handle: Any) -> None:
        await handle.result(timeout=rc.PHASE_TIMEOUT, poll_delay=RESULT_POLL)

    async def queued(self) -> int:
        return int(await self.pool.zcard("bench"))

    async def close(self) -> None:
        await self.pool.aclose()


def _describe(workload: str) -> str:
    max_jobs, poll = _settings(workload)
    return f"max_jobs={max_jobs}, poll_delay={poll * 1000:g} ms"


PEER = rc.Peer(SYSTEM, _worker, _Client.open, is_async=True)

DESCRIPTION = f"""\
- **Broker and results**: arq's own Redis layout (a sorted set per queue, a key per job
  and per result), `RedisSettings.from_dsn("{rc.redis_url(SYSTEM)}")`, pickle (arq's
  default), `keep_result=3600`; uvloop in the worker and in the producer.
- **Worker**: one process, `python -m arq bench.peers.arq_app.WorkerSettings`. arq's
  worker polls its queue every `poll_delay` (0.5 s by default, which caps a worker at
  `queue_read_limit` jobs per poll; 1 ms is its best case, and costs an idle worker 1,000
  polls a second): {_describe("noop")} for the no-ops (max_jobs 10, 100, 500 measured
  ~570, ~830, ~870/s at 5,000 no-ops),
  {_describe("io")} for the I/O-bound run (`async def`, `await asyncio.sleep(0.01)`:
  `max_jobs` is the number in flight), {_describe("latency")} for latency.
- **Producer**: `await pool.enqueue_job(name)` in a loop (a WATCH/MULTI transaction per
  job), then `await job.result(poll_delay={RESULT_POLL * 1000:g} ms)` for each in turn:
  arq polls for results (default every 0.5 s); 1 ms is its best case.
"""

SCENARIOS = rc.peer_scenarios(
    PEER,
    {"e2e": _describe("noop"), "io": _describe("io"), "latency": _describe("latency")},
)
