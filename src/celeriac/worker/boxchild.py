"""The program a boxed task runs in (``celeriac.worker.boxchild.main``).

It speaks the stdio protocol of ``docs/protocol.md`` ("Boxed tasks"): one JSON
object per line. On start it writes ``{"ready": true, "pid": N}``; then for each
request line ``{"id", "module", "qualname", "path", "args", "kwargs",
"soft_time_limit"}`` it runs the function and writes ``{"id", "ok": true, "result": ...}`` or
``{"id", "ok": false, "error": {...}}``. The task's own prints go to stderr, so
they cannot corrupt the protocol stream. A program in any language that speaks
this protocol can serve as a box.
"""

from __future__ import annotations

import importlib
import inspect
import os
import runpy
import signal
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

import msgspec

from celeriac.errors import TimeLimitExceeded
from celeriac.failures.backoff import Retry
from celeriac.failures.sections import Poisonous, policy_of
from celeriac.tasks.outcome import error_info

__all__ = ["BoxRequest", "BoxResponse", "main"]


class BoxRequest(msgspec.Struct, frozen=True):
    """Run ``module.qualname(*args, **kwargs)``; ``path`` is a script for ``__main__``."""

    id: str
    module: str
    qualname: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    path: str | None = None
    soft_time_limit: float | None = None  # seconds of the call, timed by the box itself


class BoxResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    """The reply to one request."""

    id: str
    ok: bool
    result: Any = None
    error: Any = None
    poisonous: bool = False  # the error left a ``poisonous()`` section
    retry: Retry | None = None  # the error left a ``retry(...)`` section with this policy


def _resolve(
    request: BoxRequest, cache: dict[tuple[str, str], Callable[..., Any]]
) -> Callable[..., Any]:
    key = (request.module, request.qualname)
    fn = cache.get(key)
    if fn is not None:
        return fn
    if request.module == "__main__" and request.path:
        namespace: Any = runpy.run_path(request.path, run_name="__celeriac_box__")
        obj: Any = namespace[request.qualname.split(".")[0]]
        rest = request.qualname.split(".")[1:]
    else:
        obj = importlib.import_module(request.module)
        rest = request.qualname.split(".")
    for part in rest:
        obj = getattr(obj, part)
    found: Callable[..., Any] = getattr(obj, "fn", obj)  # a Task wraps the plain function
    cache[key] = found
    return found


def _call(fn: Callable[..., Any], request: BoxRequest) -> Any:
    value = fn(*request.args, **request.kwargs)
    if inspect.isawaitable(value):
        import anyio

        async def wait() -> Any:
            return await value

        value = anyio.run(wait)
    return value


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer requests until end of input."""
    encoder = msgspec.json.Encoder()
    decoder = msgspec.json.Decoder(BoxRequest)
    cache: dict[tuple[str, str], Callable[..., Any]] = {}
    replies.write(encoder.encode({"ready": True, "pid": os.getpid()}) + b"\n")
    replies.flush()
    for line in requests:
        if not line.strip():
            continue
        request = decoder.decode(line)
        try:
            fn = _resolve(request, cache)
            soft = request.soft_time_limit if _timed() else None
            if soft:
                signal.setitimer(signal.ITIMER_REAL, soft)
            try:
                result = _call(fn, request)
            finally:
                if soft:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            reply = BoxResponse(id=request.id, ok=True, result=result)
            data = encoder.encode(reply)
        except Exception as exc:
            policy = policy_of(exc)
            response = BoxResponse(
                id=request.id,
                ok=False,
                error=error_info(exc),
                poisonous=isinstance(policy, Poisonous),
                retry=policy if isinstance(policy, Retry) else None,
            )
            data = encoder.encode(response)
        replies.write(data + b"\n")
        replies.flush()


def _soft_limit(signum: int, frame: object) -> None:
    raise TimeLimitExceeded("the task ran past its soft time limit")


def _timed() -> bool:
    """Whether soft limits can be timed here (``main`` installed the alarm handler)."""
    return signal.getsignal(signal.SIGALRM) is _soft_limit


def main() -> None:
    """Entry point: protocol on the original stdout, the task's prints on stderr.

    A request's ``soft_time_limit`` is timed here, from the call of the function
    (``ITIMER_REAL``): past it, :class:`~celeriac.errors.TimeLimitExceeded` is
    raised inside the task, which may clean up. Timing it in the box means the
    box's start and imports never count, and no alarm can reach a box between
    tasks.
    """
    signal.signal(signal.SIGALRM, _soft_limit)
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.path.insert(0, os.getcwd())
    serve(sys.stdin.buffer, protocol_out)


if __name__ == "__main__":
    main()
