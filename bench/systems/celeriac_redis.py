"""celeriac on Redis, measured with the same workloads as the peers (bench/systems/*_redis.py).

The bench process produces (``App(broker="redis://127.0.0.1:6379/8")``, asyncio with
uvloop), a worker subprocess runs: ``python -m celeriac worker bench.apps:app -Q bench``,
exactly as in the SQLite scenarios. Results go to the Redis sink beside the broker (the
default sink is the broker's URL). Until celeriac has a Redis backend, every scenario
here is FAILED with a one-line reason and the rest of the bench runs. The scenarios
themselves are in ``celeriac_servers.py``, shared with the other servers.
"""

from __future__ import annotations

from bench.systems import redis_common as rc
from bench.systems.celeriac_servers import SYSTEM, Server, scenarios

__all__ = ["DESCRIPTION", "SCENARIOS", "SERVER"]

DESCRIPTION = f"""\
- **Broker and results**: `App("bench", "{rc.redis_url("celeriac")}")`: the Redis broker
  (streams, one consumer group) and, by default, the Redis result sink on the same URL.
- **Worker**: one process, `python -m celeriac worker bench.apps:app -Q bench` (asyncio +
  uvloop), default settings for the no-ops (`async def noop()`); `--async-concurrency
  {rc.IO_IN_FLIGHT}` for the I/O-bound run (`async def sleep(s): await anyio.sleep(s)`), so
  at most {rc.IO_IN_FLIGHT} are in flight, as for every peer.
- **Producer**: `task.delay()` in a plain loop (no await: publishes are batched by the
  publisher actor), then `for r in results: await r`. Enqueue is timed until leaving
  `async with app:`, which flushes the publisher (every message is in Redis).
"""

SERVER = Server(
    name="redis",
    label="Redis",
    broker=rc.redis_url(SYSTEM),
    reset=lambda: rc.flush(SYSTEM),
    backend=("celeriac.brokers.redis", "celeriac.sinks.redis"),
    client="redis",
    extra="redis",
    peers=True,
)
"""celeriac's own Redis database, emptied (``FLUSHDB``) before every repetition."""

SCENARIOS = scenarios(SERVER)
