"""Huey on Redis (RedisHuey: storage and results), beside celeriac.

The tasks are in bench/peers/huey_app.py. ``BENCH_HUEY_<WORKLOAD>`` (for example
``BENCH_HUEY_NOOP="thread 4"``: worker type and count) overrides the chosen settings.
"""

from __future__ import annotations

import os
from typing import Any

import huey  # noqa: F401  (not installed: this module is listed under "Systems not run")

from bench.systems import redis_common as rc

__all__ = ["DESCRIPTION", "SCENARIOS"]

SYSTEM = "huey"

SETTINGS = {
    # workload: (worker type, workers)
    "noop": ("thread", 2),
    "io": ("greenlet", rc.IO_IN_FLIGHT),
    "latency": ("thread", 1),
}


def _settings(workload: str) -> tuple[str, int]:
    kind, workers = SETTINGS[workload]
    override = os.environ.get(f"BENCH_HUEY_{workload.upper()}")
    if override:
        first, _, second = override.partition(" ")
        kind, workers = first, int(second or workers)
    return kind, workers


def _worker(workload: str) -> tuple[list[str], dict[str, str]]:
    kind, workers = _settings(workload)
    entry = "bench.peers.huey_gevent" if kind == "greenlet" else "huey.bin.huey_consumer"
    args = ["-m", entry, "bench.peers.huey_app.huey", "-k", kind, "-w", str(workers)]
    return [*args, "-n", "-q"], {}


class _Client:
    """``task()`` to enqueue, ``result.get(blocking=True)`` for the result (with
    ``notify_result=True`` a BLPOP on the task's notification key)."""

    def __init__(self) -> None:
        from bench.peers import huey_app

        self.huey = huey_app.huey
        self.tasks = {"noop": huey_app.noop, "sleep": huey_app.sleep}

    def publish(self, kind: str, *args: Any) -> Any:
        return self.tasks[kind](*args)

    def wait(self, handle: Any) -> None:
        handle.get(blocking=True, timeout=rc.PHASE_TIMEOUT)

    def queued(self) -> int:
        return int(self.huey.pending_count())

    def close(self) -> None:
        pass


def _describe(workload: str) -> str:
    kind, workers = _settings(workload)
    return f"-k {kind} -w {workers}"


PEER = rc.Peer(SYSTEM, _worker, _Client)

DESCRIPTION = f"""\
- **Broker and results**: `RedisHuey(url="{rc.redis_url(SYSTEM)}", store_none=True,
  notify_result=True)`: a Redis list as the queue (BRPOP), results in a hash, and a
  notification list per result so a waiting producer blocks (BLPOP) instead of polling
  with backoff. `store_none=True` is needed for a `None` result to be stored at all.
- **Worker**: one consumer process, `huey_consumer bench.peers.huey_app.huey -n -q`
  (periodic tasks off): {_describe("noop")} for the no-ops (1, 2, 4 threads: ~1,350,
  ~1,760, ~1,740/s at 5,000 no-ops), {_describe("latency")} for latency.
- **I/O-bound**: Huey has no `async` tasks; `def sleep(s): time.sleep(s)` on
  {_describe("io")} (greenlet workers, the consumer started with gevent's monkey patching
  by bench/peers/huey_gevent.py), so {rc.IO_IN_FLIGHT} are in flight (100 threads
  instead: ~690/s against ~1,870/s).
- **Producer**: calling the task enqueues it; `result.get(blocking=True)` for each in turn.
"""

SCENARIOS = rc.peer_scenarios(
    PEER,
    {"e2e": _describe("noop"), "io": _describe("io"), "latency": _describe("latency")},
)
