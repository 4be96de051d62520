"""Taskiq on Redis (taskiq-redis broker and result backend), beside celeriac.

The tasks are in bench/peers/taskiq_app.py. ``BENCH_TASKIQ_<WORKLOAD>`` (for example
``BENCH_TASKIQ_NOOP="100"``: --max-async-tasks) overrides the chosen settings, and
``BENCH_TASKIQ_BROKER=list`` the broker (both sides), when comparing.
"""

from __future__ import annotations

import os
from typing import Any

import taskiq_redis  # noqa: F401  (not installed: listed under "Systems not run")

from bench.systems import redis_common as rc

__all__ = ["DESCRIPTION", "SCENARIOS"]

SYSTEM = "taskiq"

BROKER = os.environ.get("BENCH_TASKIQ_BROKER", "stream")
SETTINGS = {
    # workload: --max-async-tasks
    "noop": 1000,
    "io": rc.IO_IN_FLIGHT,
    "latency": 100,
}
RESULT_POLL = 0.001
"""``task.wait_result(check_interval=...)``: how often the producer polls (default 0.2 s)."""


def _settings(workload: str) -> int:
    return int(os.environ.get(f"BENCH_TASKIQ_{workload.upper()}") or SETTINGS[workload])


def _worker(workload: str) -> tuple[list[str], dict[str, str]]:
    tasks = _settings(workload)
    args = ["-m", "taskiq", "worker", "bench.peers.taskiq_app:broker", "--workers", "1"]
    args += ["--max-async-tasks", str(tasks), "--log-level", "WARNING"]
    return args, {"BENCH_TASKIQ_BROKER": BROKER}


class _Client:
    """``await task.kiq()`` to publish, ``await handle.wait_result(check_interval=1 ms)``."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.tasks = {"noop": module.noop, "sleep": module.sleep}

    @classmethod
    async def open(cls) -> _Client:
        os.environ["BENCH_TASKIQ_BROKER"] = BROKER
        from bench.peers import taskiq_app

        await taskiq_app.broker.startup()
        return cls(taskiq_app)

    async def publish(self, kind: str, *args: Any) -> Any:
        return await self.tasks[kind].kiq(*args)

    async def wait(self, handle: Any) -> None:
        result = await handle.wait_result(check_interval=RESULT_POLL, timeout=rc.PHASE_TIMEOUT)
        if result.is_err:
            raise RuntimeError(f"the task failed: {result.error!r}")

    async def queued(self) -> int:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(rc.redis_url(SYSTEM))
        try:
            if self.module.KIND == "list":
                return int(await client.llen("bench"))
            return int(await client.xlen("bench"))
        finally:
            await client.aclose()

    async def close(self) -> None:
        await self.module.broker.shutdown()


def _describe(workload: str) -> str:
    name = "RedisStreamBroker" if BROKER == "stream" else "ListQueueBroker"
    return f"{name}, --workers 1 --max-async-tasks {_settings(workload)}"


PEER = rc.Peer(SYSTEM, _worker, _Client.open, is_async=True)

DESCRIPTION = f"""\
- **Broker and results**: taskiq-redis on `{rc.redis_url(SYSTEM)}`:
  `RedisStreamBroker` (a stream with a consumer group, `XREADGROUP` 100 at a time,
  acknowledged once the result is saved: at-least-once, like celeriac) and
  `RedisAsyncResultBackend` (pickle, one key per result, 1 h expiry); uvloop in the
  worker and the producer.
- **Worker**: `python -m taskiq worker bench.peers.taskiq_app:broker --workers 1`: one
  worker process (plus taskiq's supervisor process; both are measured).
  No-ops: {_describe("noop")} (100: ~940/s, 1000: ~1,120/s at 5,000 no-ops;
  ListQueueBroker, one BRPOP per message and no acks, did no better: ~1,080/s, and much
  worse on the I/O-bound run, ~330/s). I/O-bound (`async def`, `await asyncio.sleep(0.01)`):
  {_describe("io")} ({rc.IO_IN_FLIGHT} in flight). Latency: {_describe("latency")}.
- **Producer**: `await task.kiq()` in a loop, then `await
  handle.wait_result(check_interval={RESULT_POLL * 1000:g} ms)` for each in turn: Taskiq
  polls for results (`EXISTS`, then `GET`; every 0.2 s by default); 1 ms is its best case.
"""

SCENARIOS = rc.peer_scenarios(
    PEER,
    {"e2e": _describe("noop"), "io": _describe("io"), "latency": _describe("latency")},
)
