"""Module-level tasks for the failure-handling tests (boxed tasks are imported by name).

Each task appends a line to the file it is given, so a test can count runs across
processes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celeriac import App, TimeLimitExceeded, poisonous


class Flaky(Exception):
    """Raised by the tasks below while they are told to fail."""


def _run(path: str) -> int:
    """Record one run; return how many runs there have been."""
    with open(path, "a") as f:
        f.write("run\n")
    return len(Path(path).read_text().splitlines())


def boxed_poisonous(path: str) -> None:
    """Fails inside a poisonous section: must run exactly once."""
    _run(path)
    with poisonous():
        raise Flaky("bad input")


def boxed_flaky(path: str, failures: int) -> int:
    """Fails ``failures`` times, then returns its run count."""
    runs = _run(path)
    if runs <= failures:
        raise Flaky(f"run {runs}")
    return runs


def boxed_soft_limited(path: str) -> str:
    """Runs past its soft limit, cleans up when told, and says so."""
    _run(path)
    try:
        time.sleep(10)
    except TimeLimitExceeded:
        return "cleaned up"
    return "not told"


def kill_my_worker(path: str) -> None:
    """Kills the process it runs in, every time (a poison message)."""
    _run(path)
    time.sleep(0.3)  # the other tasks of its batch are settled first
    os._exit(9)


async def ok() -> str:
    """A task that always works."""
    return "ok"


def register(app: App) -> App:
    """Register the module's tasks on ``app`` under ``failing.<name>``."""
    app.register("failing.boxed_poisonous", boxed_poisonous, boxed=True)
    app.register("failing.boxed_flaky", boxed_flaky, boxed=True)
    app.register(
        "failing.boxed_soft_limited",
        boxed_soft_limited,
        boxed=True,
        soft_time_limit=0.3,
        time_limit=5,
    )
    app.register("failing.kill_my_worker", kill_my_worker)
    app.register("failing.ok", ok)
    return app


#: what worker processes load (``tests.worker.failing_tasks:app``); broker from $CELERIAC_BROKER
app = register(App("failing"))
