"""The program a boxed task runs in (``celeriac.worker.boxchild.main``).

It speaks the stdio protocol of ``docs/protocol.md`` ("Boxed tasks"): one JSON
object per line. On start it writes ``{"ready": true, "pid": N}``; then for each
request line ``{"id", "module", "qualname", "path", "args", "kwargs"}`` it runs
the function and writes ``{"id", "ok": true, "result": ...}`` or
``{"id", "ok": false, "error": {...}}``. The task's own prints go to stderr, so
they cannot corrupt the protocol stream. A program in any language that speaks
this protocol can serve as a box.
"""

from __future__ import annotations

import importlib
import inspect
import os
import runpy
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

import msgspec

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


class BoxResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    """The reply to one request."""

    id: str
    ok: bool
    result: Any = None
    error: Any = None


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
            result = _call(_resolve(request, cache), request)
            reply = BoxResponse(id=request.id, ok=True, result=result)
            data = encoder.encode(reply)
        except Exception as exc:
            data = encoder.encode(BoxResponse(id=request.id, ok=False, error=error_info(exc)))
        replies.write(data + b"\n")
        replies.flush()


def main() -> None:
    """Entry point: protocol on the original stdout, the task's prints on stderr."""
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.path.insert(0, os.getcwd())
    serve(sys.stdin.buffer, protocol_out)


if __name__ == "__main__":
    main()
