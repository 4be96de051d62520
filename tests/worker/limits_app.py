"""The app of the multi-process limits test (``tests.worker.limits_app:app``).

Each task records when it ran in the file it is given (one O_APPEND write per line,
so several worker processes can share it).
"""

from __future__ import annotations

import os
import time

import anyio

from celeriac import App, Limit, RateLimit


def _record(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


async def limited(path: str) -> None:
    """At most two at once across all workers: records its start and end."""
    _record(path, f"start {time.time():.6f}")
    await anyio.sleep(0.05)
    _record(path, f"end {time.time():.6f}")


async def paced(path: str) -> None:
    """20 a second across all workers: records when it started, and in which process."""
    _record(path, f"{time.time():.6f} {os.getpid()}")


async def hold(path: str, seconds: float) -> None:
    """One at a time, and a slot that outlives a dead worker by 2 s at most."""
    _record(path, f"start {time.time():.6f}")
    await anyio.sleep(seconds)


def build(broker: str | None = None) -> App:
    """The app; its limits are global (kept in the broker's store)."""
    limits = App("limits", broker=broker, retry=None)
    limits.register("limits.limited", limited, concurrency=Limit(2))
    limits.register("limits.paced", paced, rate_limit=RateLimit("20/s"))
    limits.register("limits.hold", hold, concurrency=Limit(1, lease=2.0))
    return limits


app = build()
