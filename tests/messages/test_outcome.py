"""Rebuilding remote errors (tasks/outcome.py): never import or call what data names."""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import msgspec
import pytest
from tests.apps.protocol_app import ProtocolAppError

from celeriac.errors import TaskError, TaskRevoked, UnknownTask
from celeriac.tasks.outcome import (
    FAILURE,
    REVOKED,
    STARTED,
    SUCCESS,
    ErrorInfo,
    ErrorTypes,
    Outcome,
    error_info,
    value_of,
)

CANARY = "celeriac_canary_never_import_me"


def wire(info: ErrorInfo) -> ErrorInfo:
    """``info`` after a trip through JSON, as a client reads it from a sink."""
    return msgspec.json.decode(msgspec.json.encode(info), type=ErrorInfo)


def raised(exc: BaseException) -> ErrorInfo:
    try:
        raise exc
    except BaseException as caught:
        return wire(error_info(caught))


class ImportSpy(importlib.abc.MetaPathFinder):
    """Records every import the interpreter attempts while installed."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        self.names.append(fullname)
        return None


@contextmanager
def watched() -> Iterator[list[str]]:
    """Record every import attempt and every os.system call made inside the block."""
    calls: list[str] = []
    spy = ImportSpy()
    saved = os.system, importlib.import_module, builtins.__import__

    def guarded_import(name: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(f"__import__({name})")
        return saved[2](name, *args, **kwargs)

    def guarded_import_module(name: str, package: str | None = None) -> ModuleType:
        calls.append(f"import_module({name})")
        return saved[1](name, package)

    def guarded_system(command: str) -> int:
        calls.append(f"system({command})")
        return 0

    os.system = guarded_system
    importlib.import_module = guarded_import_module
    builtins.__import__ = guarded_import
    sys.meta_path.insert(0, spy)
    try:
        yield calls
    finally:
        sys.meta_path.remove(spy)
        os.system, importlib.import_module, builtins.__import__ = saved
        calls.extend(f"find_spec({name})" for name in spy.names)


def rebuild_watched(errors: ErrorTypes, info: ErrorInfo) -> BaseException:
    """``errors.rebuild(info)``, asserting it imported and called nothing."""
    with watched() as calls:
        error = errors.rebuild(info)
    assert calls == []
    return error


# -- builtins are rebuilt as themselves --------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad value"),
        KeyError("key"),
        ZeroDivisionError("division by zero"),
        FileNotFoundError(2, "gone"),
        TypeError(),
        RuntimeError("a", 1, 2.5, None, True),
    ],
)
def test_builtins_are_rebuilt(exc: Exception) -> None:
    info = raised(exc)
    assert info.module == "builtins"
    rebuilt = ErrorTypes().rebuild(info)
    assert type(rebuilt) is type(exc)
    assert rebuilt.args == exc.args
    cause = rebuilt.__cause__
    assert isinstance(cause, TaskError)
    assert cause.remote_traceback == info.traceback
    assert "Traceback" in info.traceback


def test_non_json_arguments_travel_as_the_message() -> None:
    info = raised(ValueError(object(), "x"))
    assert len(info.args) == 1
    assert isinstance(ErrorTypes().rebuild(info), ValueError)


def test_a_constructor_that_refuses_the_args_gives_task_error() -> None:
    info = ErrorInfo(type="UnicodeDecodeError", module="builtins", message="m", args=["x"])
    error = ErrorTypes().rebuild(info)
    assert isinstance(error, TaskError)
    assert error.type_name == "UnicodeDecodeError"


# -- unknown and hostile names: TaskError, nothing imported or called ------------------------


def test_unknown_module_gives_task_error() -> None:
    info = ErrorInfo(type="Boom", module=CANARY, message="it broke", traceback="tb text")
    error = rebuild_watched(ErrorTypes(), info)
    assert isinstance(error, TaskError)
    assert error.type_name == f"{CANARY}.Boom"
    assert error.message == "it broke"
    assert error.remote_traceback == "tb text"
    assert CANARY not in sys.modules


def test_allowed_but_unimported_module_is_not_imported() -> None:
    errors = ErrorTypes()
    errors.allow_module(CANARY)
    error = rebuild_watched(errors, ErrorInfo(type="E", module=CANARY, message="m"))
    assert isinstance(error, TaskError)
    assert CANARY not in sys.modules


def test_the_import_watch_works() -> None:
    with watched() as calls:
        try:
            importlib.import_module(CANARY)
        except ImportError:
            pass
        os.system("true")
    assert "import_module(" + CANARY + ")" in calls
    assert "system(true)" in calls
    assert f"find_spec({CANARY})" in calls


@pytest.mark.parametrize("allow_os", [False, True])
def test_cve_2021_23727_os_system(allow_os: bool) -> None:
    # Celery rebuilt {"exc_module": "os", "exc_type": "system"} by calling os.system.
    errors = ErrorTypes()
    if allow_os:
        errors.allow_module("os")
    info = ErrorInfo(
        type="system", module="os", message="touch /tmp/pwned", args=["touch /tmp/pwned"]
    )
    outcome = msgspec.json.decode(
        b'{"state":"FAILURE","error":{"type":"system","module":"os",'
        b'"message":"touch /tmp/pwned","args":["touch /tmp/pwned"]}}',
        type=Outcome,
    )
    assert outcome.error == info
    caught: BaseException | None = None
    with watched() as calls:
        try:
            value_of(outcome, errors)
        except BaseException as exc:  # inspected below, outside the watch
            caught = exc
    assert calls == []
    assert isinstance(caught, TaskError)
    assert caught.type_name == "os.system"


@pytest.mark.parametrize(
    "name",
    [
        "eval",
        "exec",
        "__import__",
        "open",
        "type",
        "object",
        "SystemExit",
        "KeyboardInterrupt",
        "BaseException",
        "GeneratorExit",
        "print",
        "no_such_thing",
        "ValueError.__init__",
    ],
)
def test_builtins_that_are_not_exceptions_give_task_error(name: str) -> None:
    info = ErrorInfo(type=name, module="builtins", message="x", args=["x"])
    assert isinstance(rebuild_watched(ErrorTypes(), info), TaskError)


# -- classes the caller trusts -------------------------------------------------------------


def test_classes_of_allowed_modules_are_rebuilt() -> None:
    errors = ErrorTypes()
    info = raised(ProtocolAppError("from the app"))
    assert info.module == "tests.apps.protocol_app"
    assert isinstance(errors.rebuild(info), TaskError)  # not trusted yet
    errors.allow_module("tests.apps.protocol_app")
    rebuilt = errors.rebuild(info)
    assert type(rebuilt) is ProtocolAppError
    assert rebuilt.args == ("from the app",)


def test_added_classes_are_rebuilt() -> None:
    class Local(Exception):
        pass

    errors = ErrorTypes()
    info = raised(Local("here"))
    assert isinstance(errors.rebuild(info), TaskError)
    errors.add(Local)
    assert type(errors.rebuild(info)) is Local


def test_only_classes_defined_in_the_allowed_module() -> None:
    # celeriac.tasks.outcome imports TaskError from celeriac.errors, and this module
    # imports msgspec: neither is "defined in" the allowed module.
    errors = ErrorTypes()
    errors.allow_module("celeriac.tasks.outcome")
    errors.allow_module(__name__)
    assert errors.lookup("celeriac.tasks.outcome", "TaskError") is None
    assert errors.lookup(__name__, "msgspec.ValidationError") is None
    assert errors.lookup(__name__, "ImportSpy") is None  # a class, not an exception
    assert errors.lookup("tests.apps.protocol_app", "ProtocolAppError") is None  # not allowed


def test_celeriac_errors_are_trusted_by_default() -> None:
    errors = ErrorTypes()
    assert errors.lookup("celeriac.errors", "TaskError") is TaskError
    message = "no task named 'x' here"
    info = ErrorInfo(type="UnknownTask", module="celeriac.errors", message=message, args=[message])
    rebuilt = rebuild_watched(errors, info)
    assert type(rebuilt) is UnknownTask
    assert rebuilt.args == (message,)
    assert errors.lookup("celeriac.errors", "CeleriacError.__init__") is None


# -- value_of --------------------------------------------------------------------------------


def test_value_of() -> None:
    errors = ErrorTypes()
    assert value_of(Outcome(state=SUCCESS, result=[1, 2]), errors) == [1, 2]
    with pytest.raises(TaskRevoked, match="revoked"):
        value_of(
            Outcome(
                state=REVOKED,
                error=ErrorInfo(type="TaskRevoked", module="celeriac.errors", message="revoked"),
            ),
            errors,
        )
    with pytest.raises(TaskRevoked):
        value_of(Outcome(state=REVOKED), errors)
    with pytest.raises(TaskError, match="ended in state FAILURE"):
        value_of(Outcome(state=FAILURE), errors)
    with pytest.raises(TaskError, match="ended in state STARTED"):
        value_of(Outcome(state=STARTED), errors)
    with pytest.raises(KeyError):
        value_of(Outcome(state=FAILURE, error=raised(KeyError("k"))), errors)
