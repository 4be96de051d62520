"""Task definitions: a named callable plus how to run and route it."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

import msgspec

from celeriac.canvas.primitives import Chunks, Map, Starmap
from celeriac.canvas.signature import CanvasNode, Signature, bind
from celeriac.failures.backoff import Retry
from celeriac.failures.breaker import CircuitBreaker
from celeriac.messages import Envelope, new_id
from celeriac.scheduler.limits import Limit, RateLimit

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.tasks.result import Result

__all__ = ["Kind", "Task", "TaskOptions", "kind_of", "make_envelope"]

P = ParamSpec("P")
R = TypeVar("R")

Kind = Literal["coroutine", "thread", "process"]


class TaskOptions(msgspec.Struct, frozen=True):
    """How a task is routed and run; every field has an app-wide default.

    ``time_limit`` (hard) and ``soft_time_limit`` are in seconds (``None``: no
    limit; see docs/failure-handling.md). ``retry`` is the task's retry policy:
    ``"app"`` for the app's default, ``None`` for no retries. ``dedupe`` computes a
    call's dedupe key from its arguments (see :mod:`celeriac.worker.dedupe`). ``expires`` is a
    number of seconds after publishing past which a message of this task is not
    executed.
    """

    queue: str = "default"
    priority: int = 0
    time_limit: float | None = None
    soft_time_limit: float | None = None
    retry: Retry | Literal["app"] | None = "app"
    dedupe: Callable[..., str | None] | None = None
    breaker: CircuitBreaker | None = None
    concurrency: Limit | None = None
    rate_limit: RateLimit | None = None
    expires: float | None = None
    ignore_result: bool = False
    boxed: bool = False
    sinks: tuple[str, ...] = ("default",)


def kind_of(fn: Callable[..., Any], boxed: bool) -> Kind:
    """Which execution kind runs ``fn``: coroutine (``async def``), thread, or process."""
    if boxed:
        return "process"
    if inspect.iscoroutinefunction(fn):
        return "coroutine"
    call = getattr(fn, "__call__", None)  # noqa: B004 - objects with an async __call__
    if call is not None and inspect.iscoroutinefunction(call):
        return "coroutine"
    return "thread"


def _check_priority(priority: int) -> int:
    if not 0 <= priority <= 9:
        raise ValueError(f"priority must be between 0 and 9, not {priority}")
    return priority


def make_envelope(
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    options: TaskOptions,
    *,
    countdown: float | None = None,
    eta: datetime | float | None = None,
    expires: datetime | float | None = None,
    priority: int | None = None,
    queue: str | None = None,
    task_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    ignore_result: bool | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> Envelope:
    """Build the command envelope for one call, resolving options against defaults."""
    now = time.time()
    when: float | None = None
    if countdown is not None and eta is not None:
        raise ValueError("give countdown or eta, not both")
    if countdown is not None:
        when = now + countdown
    elif isinstance(eta, datetime):
        when = eta.timestamp()
    elif eta is not None:
        when = float(eta)
    deadline: float | None
    if isinstance(expires, datetime):
        deadline = expires.timestamp()
    elif expires is not None:
        deadline = now + float(expires)
    elif options.expires is not None:
        deadline = now + options.expires
    else:
        deadline = None
    return Envelope(
        id=task_id or new_id(),
        name=name,
        args=list(args),
        kwargs=dict(kwargs or {}),
        headers=dict(headers or {}),
        eta=when,
        expires=deadline,
        priority=_check_priority(options.priority if priority is None else priority),
        queue=queue or options.queue,
        ignore_result=options.ignore_result if ignore_result is None else ignore_result,
        correlation_id=correlation_id,
        causation_id=causation_id,
        sent_at=now,
    )


class Task(Generic[P, R]):
    """A registered task. Call it for a plain local call; ``delay`` to run it on a worker."""

    def __init__(self, app: App, name: str, fn: Callable[P, Any], options: TaskOptions) -> None:
        self.app = app
        self.name = name
        self.fn = fn
        self.options = options
        self.kind: Kind = kind_of(fn, options.boxed)
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name} ({self.kind})>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, with no messaging."""
        result: R = self.fn(*args, **kwargs)
        return result

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Result[R]:
        """Publish a command to run this task with these arguments; return its Result."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        expires: datetime | float | None = None,
        priority: int | None = None,
        queue: str | None = None,
        task_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        ignore_result: bool | None = None,
    ) -> Result[R]:
        """Publish a command with options; return its Result at once.

        ``countdown`` (seconds) or ``eta`` (a datetime or unix time) delay it;
        ``expires`` (seconds from now, or a datetime) drops it if it has not run by
        then; ``priority`` is 0-9, higher first.
        """
        envelope = make_envelope(
            self.name,
            args,
            kwargs,
            self.options,
            countdown=countdown,
            eta=eta,
            expires=expires,
            priority=priority,
            queue=queue,
            task_id=task_id,
            headers=headers,
            ignore_result=ignore_result,
        )
        return self.app.publish(envelope)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task: a call as data, for canvases.

        Partial: in a chain, the previous result is prepended to ``args``.
        """
        return _bound(Signature(self.name, args=args, kwargs=kwargs), self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: in a chain, it ignores the previous result."""
        return _bound(Signature(self.name, args=args, kwargs=kwargs, immutable=True), self.app)

    def map(self, items: Iterable[Any]) -> Map:
        """One call per item, ``[task(item) for item in items]``, one message each."""
        return _bound(Map(self.name, items=tuple(items)), self.app)

    def starmap(self, items: Iterable[Sequence[Any]]) -> Starmap:
        """One call per item, unpacked: ``[task(*item) for item in items]``."""
        return _bound(Starmap(self.name, items=tuple(tuple(item) for item in items)), self.app)

    def chunks(self, items: Iterable[Sequence[Any]], n: int) -> Chunks:
        """The starmap of ``items`` in messages of ``n`` calls each: a list of lists."""
        chunks = Chunks(self.name, items=tuple(tuple(item) for item in items), size=n)
        return _bound(chunks, self.app)


N = TypeVar("N", bound=CanvasNode)


def _bound(node: N, app: App) -> N:
    bind(node, app)
    return node
