"""The app of the SIGKILL test (``tests.worker.chaos_app:app``; broker from $CELERIAC_BROKER).

``work`` records its start and end in a file (O_APPEND lines, so several worker
processes may write), tagged with the message's ``tag``: the test can tell which
message ran, and how often.
"""

from __future__ import annotations

import anyio

from celeriac import App, Retry


def record(path: str, line: str) -> None:
    """Append one line (one write: lines from several processes do not interleave)."""
    with open(path, "a") as f:
        f.write(line + "\n")


async def work(n: int, tag: str, path: str) -> int:
    """A short task with an effect: a ``start`` line, a pause, a ``done`` line."""
    record(path, f"start {n} {tag}")
    await anyio.sleep(0.002)
    record(path, f"done {n} {tag}")
    return n


def build(broker: str | None = None) -> App:
    """The app on ``broker``; ``work`` is deduplicated by ``n``."""
    chaos = App("chaos", broker=broker, retry=Retry(max_retries=3, backoff=0.05, jitter=False))
    chaos.register("chaos.work", work, dedupe=lambda n, tag, path: str(n))
    return chaos


app = build()
