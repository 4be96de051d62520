"""RQ's job functions (RQ imports them by name in the worker): ``rq worker bench``."""

from __future__ import annotations

import time


def noop() -> None:
    """Returns at once."""


def sleep(seconds: float) -> None:
    """Waits without using the CPU (RQ runs one job at a time per worker process)."""
    time.sleep(seconds)
