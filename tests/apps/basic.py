"""A test app with tasks of every kind; the broker comes from $CELERIAC_BROKER.

Functions live at module level (boxed tasks are found by module and name in the
box process); :func:`make_app` registers them on a fresh App, so each test can
have its own broker.
"""

from __future__ import annotations

import os
import time

import anyio

from celeriac import App, Retry

#: failing tasks retry once, at once: the retry path runs in every test that fails a task
QUICK_RETRY = Retry(max_retries=1, backoff=0.01, max_backoff=0.01, jitter=False)


class PaymentDeclined(Exception):
    """A user-defined error, rebuilt as itself on the caller's side."""


class Unbuildable(Exception):
    """An error whose constructor needs arguments the wire does not carry."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


async def add(x: int, y: int) -> int:
    return x + y


def mul(x: int, y: int) -> int:
    return x * y


def pid() -> int:
    return os.getpid()


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


async def sleep(seconds: float, path: str | None = None, tag: str = "") -> str:
    if path:
        _append(path, f"start {tag} {os.getpid()}")
    await anyio.sleep(seconds)
    if path:
        _append(path, f"end {tag} {os.getpid()}")
    return tag


def sleep_sync(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def record(path: str, tag: str) -> str:
    _append(path, tag)
    return tag


async def decline(amount: int) -> None:
    raise PaymentDeclined(f"declined {amount}")


def unbuildable() -> None:
    raise Unbuildable(7, "nope")


def boxed_crash() -> None:
    os._exit(3)


async def slow_limited() -> str:
    await anyio.sleep(5)
    return "never"


def boxed_slow() -> str:
    time.sleep(10)
    return "never"


def unserializable() -> object:
    return object()


def make_app(broker: str | list[str] | None = None, **settings: object) -> App:
    """The app, with every task registered under ``basic.<name>``."""
    settings.setdefault("retry", QUICK_RETRY)
    app = App("basic", broker=broker, **settings)
    for fn in (add, mul, pid, sleep, sleep_sync, record, decline, unbuildable, unserializable):
        app.register(f"basic.{fn.__name__}", fn)
    app.register("basic.boxed_pid", pid, boxed=True)
    app.register("basic.boxed_mul", mul, boxed=True)
    app.register("basic.boxed_crash", boxed_crash, boxed=True)
    app.register("basic.boxed_slow", boxed_slow, boxed=True, time_limit=0.5)
    app.register("basic.slow_limited", slow_limited, time_limit=0.3)
    app.register("basic.prio_record", record, queue="prio")
    return app


app = make_app()
