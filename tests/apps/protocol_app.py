"""Tasks for the wire-protocol tests (``tests/test_raw_protocol.py``).

The tasks have short explicit names, as a program in another language would use
them: ``protocol.add``, ``protocol.touch``, ``protocol.fail``, ``protocol.echo``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celeriac import App, Retry

__all__ = ["ProtocolAppError", "make_app"]


#: failing tasks retry once, at once: the retry path runs in every test that fails a task
QUICK_RETRY = Retry(max_retries=1, backoff=0.01, max_backoff=0.01, jitter=False)


class ProtocolAppError(Exception):
    """A task error defined by the app (rebuilt as itself by the app's own results)."""


async def add(a: int, b: int) -> int:
    """Coroutine task."""
    return a + b


def touch(path: str, text: str = "ran") -> str:
    """Thread task with a visible side effect: writes ``text`` to ``path``."""
    Path(path).write_text(text)
    return path


def fail(message: str) -> None:
    """Always fails."""
    raise ProtocolAppError(message)


async def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Returns its arguments."""
    return {"args": list(args), "kwargs": kwargs}


def make_app(broker: str, **settings: Any) -> App:
    """An app on ``broker`` with the protocol test tasks registered."""
    settings.setdefault("retry", QUICK_RETRY)
    app = App("protocol", broker=broker, **settings)
    app.register("protocol.add", add)
    app.register("protocol.touch", touch)
    app.register("protocol.fail", fail)
    app.register("protocol.echo", echo)
    return app
