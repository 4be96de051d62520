"""A pool of box processes for boxed tasks (CEP "Boxed Tasks").

Each box is a child process running :mod:`celeriac.worker.boxchild`, driven over
its stdin/stdout with the JSON-lines protocol. A box runs one task at a time. A
box that dies mid-task fails that task (``BoxDied``) and is replaced; a box that
overruns a hard time limit, or whose task is revoked, is killed and replaced.
No pickle: requests and replies are JSON.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream

from celeriac.failures.backoff import Retry
from celeriac.worker.boxchild import BoxRequest

__all__ = ["Box", "BoxDied", "BoxPool"]

log = logging.getLogger("celeriac.worker.boxes")

_MAX_LINE = 64 * 1024 * 1024


class BoxDied(Exception):
    """The process running a boxed task died before answering."""


class _Reply(msgspec.Struct):
    id: str = ""
    ok: bool = False
    result: Any = None
    error: Any = None
    ready: bool = False
    pid: int = 0
    poisonous: bool = False
    retry: Retry | None = None


_decoder = msgspec.json.Decoder(_Reply)
_encoder = msgspec.json.Encoder()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    if os.getcwd() not in paths:
        paths.insert(0, os.getcwd())
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class Box:
    """One child process."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        assert process.stdout is not None
        assert process.stdin is not None
        self._out = BufferedByteReceiveStream(process.stdout)
        self._in = process.stdin

    @classmethod
    async def spawn(cls) -> Box:
        """Start a box and wait for its ready line."""
        process = await anyio.open_process(
            [sys.executable, "-c", "from celeriac.worker.boxchild import main; main()"],
            stdin=-1,
            stdout=-1,
            stderr=None,
            env=_child_env(),
        )
        box = cls(process)
        try:
            reply = await box._read()
        except BaseException:  # cancelled (a time limit, shutdown) while it was starting
            await box.kill()
            raise
        if not reply.ready:
            await box.kill()
            raise BoxDied("box did not start")
        return box

    async def _read(self) -> _Reply:
        try:
            line = await self._out.receive_until(b"\n", _MAX_LINE)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            raise BoxDied(f"box process {self.process.pid} died") from None
        return _decoder.decode(line)

    async def call(self, request: BoxRequest) -> _Reply:
        """Send one request and wait for its reply."""
        try:
            await self._in.send(_encoder.encode(request) + b"\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            raise BoxDied(f"box process {self.process.pid} died") from None
        return await self._read()

    async def kill(self) -> None:
        """Kill the process and reap it."""
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None:
                try:
                    self.process.kill()
                except ProcessLookupError:
                    pass
            await self.process.aclose()

    async def close(self) -> None:
        """Ask the box to exit (end of input), killing it if it lingers."""
        with anyio.CancelScope(shield=True):
            try:
                await self._in.aclose()
            except Exception:
                pass
            with anyio.move_on_after(2):
                await self.process.wait()
            await self.kill()


class BoxPool:
    """Hands out idle boxes; spawns new ones on demand up to ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[Box] = []
        self._all: set[Box] = set()
        self._limiter = anyio.CapacityLimiter(size)
        self._running: dict[str, Box] = {}

    def resize(self, size: int) -> None:
        """Allow ``size`` boxes at once."""
        self.size = max(1, size)
        self._limiter.total_tokens = self.size

    async def run(
        self,
        request: BoxRequest,
        timeout: float | None,
        on_start: Callable[[Box], None] | None = None,
    ) -> _Reply:
        """Run ``request`` in an idle box. A box that fails or times out is killed."""
        async with self._limiter:
            box = self._idle.pop() if self._idle else None
            if box is None or box.process.returncode is not None:
                box = await Box.spawn()
                self._all.add(box)
            if on_start is not None:
                on_start(box)
            healthy = False
            self._running[request.id] = box
            try:
                with anyio.fail_after(timeout):
                    reply = await box.call(request)
                healthy = True
                return reply
            finally:
                self._running.pop(request.id, None)
                if healthy and len(self._idle) < self.size:
                    self._idle.append(box)
                else:
                    self._all.discard(box)
                    await box.kill()

    async def aclose(self) -> None:
        """Stop every box."""
        boxes, self._all, self._idle = list(self._all), set(), []
        for box in boxes:
            await box.close()
