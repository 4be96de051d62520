"""Dramatiq on Redis (its Redis broker, the Results middleware on Redis), beside celeriac.

The actors are in bench/peers/dramatiq_app.py. ``BENCH_DRAMATIQ_<WORKLOAD>`` (for
example ``BENCH_DRAMATIQ_NOOP="1 8"``: processes and threads) overrides the chosen
settings when comparing.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq  # noqa: F401  (not installed: this module is listed under "Systems not run")

from bench.systems import redis_common as rc

__all__ = ["DESCRIPTION", "SCENARIOS"]

SYSTEM = "dramatiq"

SETTINGS = {
    # workload: (processes, threads per process, worker_timeout ms: the idle poll's cap)
    "noop": (1, 16, 1000),
    "io": (1, rc.IO_IN_FLIGHT, 1000),
    "latency": (1, 1, 1),
}


def _settings(workload: str) -> tuple[int, int, int]:
    processes, threads, timeout = SETTINGS[workload]
    override = os.environ.get(f"BENCH_DRAMATIQ_{workload.upper()}")
    if override:
        numbers = [int(x) for x in override.split()]
        processes, threads = numbers[0], numbers[1]
        if len(numbers) > 2:
            timeout = numbers[2]
    return processes, threads, timeout


def _worker(workload: str) -> tuple[list[str], dict[str, str]]:
    processes, threads, timeout = _settings(workload)
    args = ["-m", "dramatiq", "bench.peers.dramatiq_app", "-Q", "bench"]
    args += ["--processes", str(processes), "--threads", str(threads)]
    return args, {"dramatiq_worker_timeout": str(timeout)}


class _Client:
    """``actor.send(...)`` to publish, ``message.get_result(block=True)`` for the result
    (the Redis results backend: a BRPOPLPUSH on the message's result key)."""

    def __init__(self) -> None:
        from bench.peers import dramatiq_app

        self.broker = dramatiq_app.broker
        self.actors = {"noop": dramatiq_app.noop, "sleep": dramatiq_app.sleep}

    def publish(self, kind: str, *args: Any) -> Any:
        return self.actors[kind].send(*args)

    def wait(self, handle: Any) -> None:
        handle.get_result(block=True, timeout=int(rc.PHASE_TIMEOUT * 1000))

    def queued(self) -> int:
        return int(self.broker.client.hlen(f"{self.broker.namespace}:bench.msgs"))

    def close(self) -> None:
        pass


def _describe(workload: str) -> str:
    processes, threads, timeout = _settings(workload)
    text = f"--processes {processes} --threads {threads}"
    return text + (f", dramatiq_worker_timeout={timeout}" if timeout != 1000 else "")


PEER = rc.Peer(SYSTEM, _worker, _Client)

DESCRIPTION = f"""\
- **Broker and results**: `RedisBroker(url={rc.redis_url(SYSTEM)})` with the default
  middleware plus `Results(backend=RedisBackend(...))` and `AsyncIO()`; actors with
  `store_results=True, max_retries=0`.
- **No-ops, end to end** (`{_describe("noop")}`): one worker process (the `dramatiq`
  command adds its supervisor process; both are measured). A consumer prefetches twice
  its thread count, so with 1 or 2 threads it goes back to Redis every message or two:
  measured at 5,000 no-ops, 1 thread ~260/s, 2 ~500/s, 8 (the default) ~1,560/s,
  16 ~1,970/s, 32 ~1,770/s.
- **I/O-bound** (`{_describe("io")}`): the actor is `async def` with `await
  asyncio.sleep(0.01)` on the AsyncIO middleware's event loop thread; each worker thread
  waits for one coroutine, so {rc.IO_IN_FLIGHT} threads give {rc.IO_IN_FLIGHT} in flight.
- **Latency** (`{_describe("latency")}`): an idle Dramatiq consumer polls Redis with a
  backoff capped by `dramatiq_worker_timeout` (1 s by default); at 1 ms the poll no longer
  dominates the round trip (p50 ~1.8 ms, against ~4.6 ms at 5 ms), at the cost of an idle
  worker polling Redis up to 1,000 times a second.
- **Producer**: `actor.send()` in a loop, then `message.get_result(block=True)` for each
  in turn.
"""

SCENARIOS = rc.peer_scenarios(
    PEER,
    {"e2e": _describe("noop"), "io": _describe("io"), "latency": _describe("latency")},
)
