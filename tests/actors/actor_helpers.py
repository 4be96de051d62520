"""Small actors the actor-core tests share: they record what happens to them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from celeriac.actors import Actor


class Boom(Exception):
    """The error test actors crash with."""


class Recorder(Actor[Any]):
    """Appends ``(event, name)`` to a shared list; crashes on ``"crash"``, stops on ``"stop"``."""

    def __init__(self, events: list[tuple[str, str]], fail_starts: int = 0) -> None:
        self.events = events
        self.fail_starts = fail_starts

    async def on_start(self) -> None:
        if self.fail_starts:
            self.events.append(("failed", self.ref.name))
            raise Boom(f"{self.ref.name} cannot start")
        self.events.append(("start", self.ref.name))

    async def receive(self, message: Any) -> Any:
        if message == "crash":
            raise Boom(f"{self.ref.name} crashed")
        if message == "stop":
            self.stop()
        return message

    async def on_stop(self) -> None:
        self.events.append(("stop", self.ref.name))


def recorder(events: list[tuple[str, str]], *, fail_starts: int = 0) -> Callable[[], Recorder]:
    """A factory of Recorders whose first ``fail_starts`` starts fail."""
    failures = [fail_starts]

    def make() -> Recorder:
        failing = failures[0] > 0
        failures[0] -= 1
        return Recorder(events, fail_starts=int(failing))

    return make


async def eventually(check: Callable[[], bool], within: float = 1.0) -> None:
    """Wait until ``check()`` is true, polling; fail the test after ``within`` seconds."""
    with anyio.fail_after(within):
        while not check():
            await anyio.sleep(0.002)
