"""Task outcomes as document messages, and rebuilding remote errors safely.

A result is a document envelope (``kind="document"``) whose ``id`` is the task's
id and whose ``body`` is ``{"state": ..., "result": ...}`` or
``{"state": "FAILURE", "error": {"type", "module", "message", "traceback"}}``.

Rebuilding an error never imports anything named by stored data (the lesson of
CVE-2021-23727): a remote error comes back as the same type only when that type
is a builtin exception or an exception class the caller's :class:`ErrorTypes`
already knows; otherwise it is a :class:`~celeriac.errors.TaskError`.
"""

from __future__ import annotations

import builtins
import sys
import traceback
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from celeriac.errors import TaskError, TaskRevoked
from celeriac.messages import Envelope

__all__ = [
    "FAILURE",
    "PENDING",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "TERMINAL",
    "ErrorInfo",
    "ErrorTypes",
    "Outcome",
    "document_for",
    "error_info",
    "value_of",
]

PENDING: Final = "PENDING"
STARTED: Final = "STARTED"
RETRY: Final = "RETRY"
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"
REVOKED: Final = "REVOKED"
TERMINAL: Final = frozenset({SUCCESS, FAILURE, REVOKED})


class ErrorInfo(msgspec.Struct, frozen=True):
    """A task error as it travels: type name, defining module, text, traceback text."""

    type: str
    module: str
    message: str
    traceback: str = ""
    args: list[Any] = []


class Outcome(msgspec.Struct, frozen=True, omit_defaults=True):
    """The body of a result document."""

    state: str
    result: Any = None
    error: ErrorInfo | None = None
    worker: str | None = None
    runtime: float | None = None


def _jsonable_args(exc: BaseException) -> list[Any]:
    out: list[Any] = []
    for arg in exc.args:
        if isinstance(arg, str | int | float | bool) or arg is None:
            out.append(arg)
        else:
            return [str(exc)]
    return out


def error_info(exc: BaseException) -> ErrorInfo:
    """Describe ``exc`` for the wire."""
    cls = type(exc)
    return ErrorInfo(
        type=cls.__qualname__,
        module=cls.__module__,
        message=str(exc),
        traceback="".join(traceback.format_exception(exc)),
        args=_jsonable_args(exc),
    )


def document_for(task: Envelope, outcome: Outcome) -> Envelope:
    """The result document for ``task``."""
    return Envelope(
        id=task.id,
        name=task.name,
        kind="document",
        body=outcome,
        correlation_id=task.correlation_id,
        causation_id=task.id,
    )


class ErrorTypes:
    """Exception classes a caller is willing to rebuild, keyed by (module, qualname).

    Builtin exceptions are always known; an app adds the exception classes defined
    in the modules of its registered tasks, and :meth:`add` adds more.
    """

    def __init__(self) -> None:
        self._types: dict[tuple[str, str], type[BaseException]] = {}
        self._modules: set[str] = {"celeriac.errors", "celeriac.canvas.errors"}

    def add(self, cls: type[BaseException]) -> None:
        """Allow ``cls`` to be rebuilt from a remote error."""
        self._types[(cls.__module__, cls.__qualname__)] = cls

    def add_from_namespace(self, namespace: dict[str, Any]) -> None:
        """Allow every exception class defined directly in a module's namespace."""
        for value in list(namespace.values()):
            if isinstance(value, type) and issubclass(value, Exception):
                self.add(value)

    def allow_module(self, module: str) -> None:
        """Trust exception classes defined in ``module`` (once it is imported)."""
        self._modules.add(module)

    def lookup(self, module: str, name: str) -> type[BaseException] | None:
        """The class for (module, qualname), if it is one this caller trusts.

        Nothing is imported: only builtins, classes added with :meth:`add`, and
        classes in already-imported modules allowed with :meth:`allow_module`.
        """
        found: object = None
        if module == "builtins":
            found = getattr(builtins, name, None)
        elif (module, name) in self._types:
            return self._types[(module, name)]
        elif module in self._modules and module in sys.modules:
            found = sys.modules[module]
            for part in name.split("."):
                # Plain namespace lookups: no module __getattr__ or descriptor runs.
                namespace = getattr(found, "__dict__", None)
                found = namespace.get(part) if isinstance(namespace, Mapping) else None
            # Only a class defined there under that name, not one reached through an
            # attribute of the module (``other_module.SomeError``).
            if not isinstance(found, type) or (found.__module__, found.__qualname__) != (
                module,
                name,
            ):
                found = None
        if isinstance(found, type) and issubclass(found, Exception):
            return found
        return None

    def rebuild(self, info: ErrorInfo) -> BaseException:
        """An exception to raise for ``info``: the original type where trusted."""
        cls = self.lookup(info.module, info.type)
        if cls is not None:
            try:
                exc = cls(*info.args)
            except Exception:  # constructor wants other arguments
                exc = None
            if exc is not None:
                exc.__cause__ = TaskError(_qualified(info), info.message, info.traceback)
                return exc
        return TaskError(_qualified(info), info.message, info.traceback)


def _qualified(info: ErrorInfo) -> str:
    return info.type if info.module == "builtins" else f"{info.module}.{info.type}"


def value_of(outcome: Outcome, errors: ErrorTypes) -> Any:
    """The task's return value, or raise its (rebuilt) error."""
    if outcome.state == SUCCESS:
        return outcome.result
    if outcome.state == REVOKED:
        raise TaskRevoked(outcome.error.message if outcome.error else "task was revoked")
    if outcome.error is None:
        raise TaskError("UnknownError", f"task ended in state {outcome.state}")
    raise errors.rebuild(outcome.error)
