"""The app of the distributed canvas tests: the strategies' tasks, by their names.

The broker comes from ``CELERIAC_BROKER`` (the test's own SQLite file or Redis
prefix). Every task is registered with ``retry=None``, so a failure fails its step
at once, as in :func:`~celeriac.canvas.run_local`.

Side effects, for the tests to count, go to files named by environment variables:

- ``t.record`` (the error callback) appends its arguments, as a JSON line, to
  ``CANVAS_ERRBACKS``, then returns what the strategies' ``record`` returns;
- ``k.member`` and ``k.body`` (the chord of the kill test) append a line to
  ``CANVAS_EFFECTS``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import anyio
from tests.canvas.strategies import TASKS

from celeriac import App


def _append(variable: str, line: str) -> None:
    path = os.environ.get(variable)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def record(*args: Any) -> int:
    """``t.record``: note the call, then count the arguments (as the strategies' does)."""
    _append("CANVAS_ERRBACKS", json.dumps(errback_line(args)))
    return int(TASKS["t.record"](*args))


def errback_line(args: tuple[Any, ...] | list[Any]) -> list[Any]:
    """An error callback's arguments as recorded: error dicts lose their traceback,
    which differs between processes."""
    return [
        {k: v for k, v in arg.items() if k != "traceback"} if isinstance(arg, dict) else arg
        for arg in args
    ]


async def member(n: int, pause: float = 0.0) -> int:
    """A member of the kill test's chord: take ``pause`` seconds, note it ran (in which
    process), give ``n``."""
    await anyio.sleep(pause)
    _append("CANVAS_EFFECTS", f"member {n} {os.getpid()}")
    return n


def body(values: list[int]) -> int:
    """The kill test's chord body: note it ran, give the sum of the header's results."""
    _append("CANVAS_EFFECTS", f"body {len(values)} {os.getpid()}")
    return sum(values)


def make_app(broker: str | None = None) -> App:
    """An app with every task of these tests, on ``broker`` (default: ``CELERIAC_BROKER``)."""
    app = App("canvas", broker)
    for name, fn in TASKS.items():
        app.register(name, record if name == "t.record" else fn, retry=None)
    app.register("k.member", member, retry=None)
    app.register("k.body", body, retry=None)
    return app


app = make_app()
