"""The App: composition root of tasks, settings, codec and connections.

There is no global or current app: everything hangs off the ``App`` a user made.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, contextmanager
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

import anyio
import anyio.from_thread
import msgspec

from celeriac.abc import Outgoing, StoredDocument
from celeriac.brokers import Hub
from celeriac.canvas.flatten import to_graph
from celeriac.canvas.graph import Graph
from celeriac.canvas.primitives import Canvas
from celeriac.canvas.status import WorkflowRun
from celeriac.canvas.workflow import Workflow
from celeriac.config import Settings, load_settings
from celeriac.errors import ConfigurationError, DecodeError
from celeriac.failures.backoff import Retry
from celeriac.failures.breaker import CircuitBreaker
from celeriac.failures.health import HealthCheck, HealthFunction
from celeriac.messages import Codec, Envelope
from celeriac.runtime import Bridge, Runtime
from celeriac.scheduler.limits import Limit, RateLimit, limit_of, rate_limit_of
from celeriac.scheduler.periodic import Missed, Periodic, schedule_of
from celeriac.tasks.event import EventType
from celeriac.tasks.outcome import PENDING, REVOKED, ErrorInfo, ErrorTypes, Outcome, value_of
from celeriac.tasks.result import Result
from celeriac.tasks.task import Task, TaskOptions, make_envelope

if TYPE_CHECKING:
    from celeriac.worker import Worker

__all__ = ["App"]

P = ParamSpec("P")
R = TypeVar("R")

_NOT_YET: dict[str, str] = {}  # options of later issues -> the area that will bring them


def _check_time_limits(name: str, hard: float | None, soft: float | None) -> None:
    for label, value in (("time_limit", hard), ("soft_time_limit", soft)):
        if value is not None and not value > 0:
            raise ConfigurationError(f"task {name!r}: {label} must be positive, not {value!r}")
    if hard is not None and soft is not None and soft > hard:
        raise ConfigurationError(
            f"task {name!r}: soft_time_limit ({soft}) is longer than time_limit ({hard})"
        )


def _module_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "__main__"
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return str(spec.name)
    path = getattr(main, "__file__", None)
    return Path(path).stem if path else "__main__"


def default_name(fn: Callable[..., Any]) -> str:
    """A task's default name: ``{module}.{qualname}``."""
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{_module_name(fn)}.{qualname}"


def _check_boxable(name: str, fn: Callable[..., Any]) -> None:
    """A boxed task runs in another process, found there by module and name."""
    qualname = getattr(fn, "__qualname__", None)
    if not inspect.isfunction(fn) or qualname is None or "<" in qualname:
        raise ConfigurationError(
            f"boxed task {name!r} must be a function defined at module level (a box process "
            f"imports it by module and name); {fn!r} is not"
        )


def _graph_of(
    canvas: Canvas | Workflow,
    inputs: Mapping[str, Any] | None,
    workflow_id: str | None,
    name: str | None,
) -> Graph:
    if isinstance(canvas, Workflow):
        return canvas.instantiate(inputs, workflow_id=workflow_id)
    if inputs is not None:
        raise TypeError("inputs are for a Workflow; a canvas carries its own arguments")
    return to_graph(canvas, workflow_id=workflow_id, name=name)


class App:
    """A celeriac application: its tasks, settings and connections.

    ``broker`` is a URL (default: the embedded SQLite file ``./celeriac.db``) or
    a list of URLs (the first is the default). ``sinks`` names data sinks;
    ``"default"`` is where results are read. ``config`` is a Python module name
    or a ``.toml``/``.yaml`` file; environment variables ``CELERIAC_*`` and
    keyword arguments override it (see :class:`~celeriac.config.Settings`).
    """

    def __init__(
        self,
        name: str,
        broker: str | Sequence[str] | None = None,
        *,
        sinks: Mapping[str, str] | None = None,
        config: str | Path | None = None,
        routes: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> None:
        self.name = name
        overrides: dict[str, Any] = dict(settings)  # given explicitly: None means None
        if broker is not None:
            overrides["broker"] = list(broker) if isinstance(broker, list | tuple) else broker
        if sinks is not None:
            overrides["sinks"] = dict(sinks)
        if routes is not None:
            overrides["routes"] = dict(routes)
        self.settings: Settings = load_settings(config, overrides)
        self._check_default_sink()
        self.hub = Hub()
        self.tasks: dict[str, Task[..., Any]] = {}
        self.events: dict[str, EventType] = {}
        self.subscriptions: dict[str, list[str]] = {}  # event name -> subscribed task names
        self.health_checks: dict[str, HealthCheck] = {}
        self.periodics: dict[str, Periodic] = {}
        self.errors = ErrorTypes()
        self.codec = self._make_codec()
        self._bridge = Bridge(self)
        self._stacks: dict[object, tuple[AsyncExitStack, Runtime]] = {}

    def __repr__(self) -> str:
        return f"<App {self.name} broker={self.broker_url}>"

    def _check_default_sink(self) -> None:
        if "default" in self.settings.sinks:
            return
        from celeriac.sinks import sink_schemes

        scheme = self.broker_url.partition("://")[0]
        if scheme not in sink_schemes():
            raise ConfigurationError(
                f"{scheme}:// brokers keep no results, so results need a sink of their own: "
                f"App(..., sinks={{'default': 'redis://...'}}) (any sink URL: "
                f"{', '.join(s + '://' for s in sink_schemes())})"
            )

    def _make_codec(self) -> Codec:
        keys = {k: v.encode() for k, v in self.settings.signing_keys.items()}
        if self.settings.signing_key:
            keys.setdefault("default", self.settings.signing_key.encode())
        return Codec(format=self.settings.serializer, keys=keys or None)

    # -- where things go ---------------------------------------------------------

    @property
    def broker_urls(self) -> list[str]:
        """Every broker URL, the default first."""
        broker = self.settings.broker
        return [broker] if isinstance(broker, str) else list(broker)

    @property
    def broker_url(self) -> str:
        """The default broker's URL."""
        return self.broker_urls[0]

    @property
    def sink_urls(self) -> dict[str, str]:
        """Every sink by name; ``default`` is beside the default broker unless configured."""
        sinks = dict(self.settings.sinks)
        sinks.setdefault("default", self.broker_url)
        return sinks

    @property
    def coordinator_url(self) -> str:
        """Where global limits and periodic ticks keep their state (``coordinator``
        setting, else the default sink's URL)."""
        return self.settings.coordinator or self.sink_urls["default"]

    def _route(self, name: str, queue: str | None) -> tuple[str, str | None]:
        route = self.settings.routes.get(name)
        if route is None:
            return self.broker_url, queue
        if "://" in route:
            url, _, routed_queue = route.partition("#")
            if url not in self.broker_urls:
                raise ConfigurationError(f"route for {name!r} names unknown broker {url!r}")
            return url, queue or routed_queue or None
        return self.broker_url, queue or route

    def queues(self) -> list[str]:
        """Every queue the registered tasks are routed to (``default`` included)."""
        names = {"default"} | {task.options.queue for task in self.tasks.values()}
        return sorted(names)

    # -- tasks -------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        expires: float | None = None,
        ignore_result: bool = False,
        boxed: bool = False,
        sinks: Sequence[str] = ("default",),
        retry: Retry | Literal["app"] | None = "app",
        dedupe: Callable[..., str | None] | None = None,
        breaker: CircuitBreaker | None = None,
        concurrency: int | Limit | None = None,
        rate_limit: str | RateLimit | None = None,
        **unsupported: Any,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        expires: float | None = None,
        ignore_result: bool = False,
        boxed: bool = False,
        sinks: Sequence[str] = ("default",),
        retry: Retry | Literal["app"] | None = "app",
        dedupe: Callable[..., str | None] | None = None,
        breaker: CircuitBreaker | None = None,
        concurrency: int | Limit | None = None,
        rate_limit: str | RateLimit | None = None,
        **unsupported: Any,
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a function as a task (``@app.task`` or ``@app.task(...)``).

        ``async def`` runs as a coroutine on the worker's loop, ``def`` in a worker
        thread, and ``boxed=True`` in a separate process.
        """

        def decorate(func: Callable[P, R]) -> Task[P, R]:
            return self.register(
                name or default_name(func),
                func,
                queue=queue,
                priority=priority,
                time_limit=time_limit,
                soft_time_limit=soft_time_limit,
                expires=expires,
                ignore_result=ignore_result,
                boxed=boxed,
                sinks=sinks,
                retry=retry,
                dedupe=dedupe,
                breaker=breaker,
                concurrency=concurrency,
                rate_limit=rate_limit,
                **unsupported,
            )

        if fn is not None:
            return decorate(fn)
        return decorate

    def health_check(
        self,
        fn: HealthFunction | None = None,
        /,
        *,
        every: float = 10.0,
        timeout: float | None = None,
        name: str | None = None,
    ) -> Any:
        """Register a health check (``@app.health_check`` or ``@app.health_check(every=...)``).

        The function takes no arguments and returns (or, ``async def``, awaits to) a
        :class:`~celeriac.HealthState`. Workers run it every ``every`` seconds; an
        exception or a time-out counts as ``UNHEALTHY`` and is logged, never fatal.
        Returns the :class:`~celeriac.failures.HealthCheck`, to name in a
        :class:`~celeriac.CircuitBreaker`'s ``health_checks``.
        """

        def decorate(func: HealthFunction) -> HealthCheck:
            check = HealthCheck(name or default_name(func), func, every=every, timeout=timeout)
            self.health_checks[check.name] = check
            return check

        if fn is not None:
            return decorate(fn)
        return decorate

    def periodic(
        self,
        target: Task[..., Any] | str | Callable[..., Any] | None = None,
        /,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        tz: str | tzinfo | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        missed: Missed = "skip",
        **task_options: Any,
    ) -> Any:
        """Publish a task on a schedule: ``cron=`` (in ``tz``, default UTC) or ``every=``.

        As a decorator (``@app.periodic(cron="*/5 * * * *", tz="Europe/Paris")``) it
        also registers the function as a task (``name`` and ``task_options`` as for
        :meth:`task`) and returns the Task. Given a Task or a registered task's name
        (``app.periodic(cleanup, every=60, args=(7,))``) it returns the
        :class:`~celeriac.scheduler.periodic.Periodic`; ``name`` then names the
        periodic (default: the task's name), so one task may have several. Running
        schedulers (``celeriac scheduler``) publish each tick once; ``missed``
        (``"skip"`` or ``"catch_up_once"``) says what becomes of ticks missed while
        none ran. A bad schedule raises ConfigurationError here.
        """
        schedule = schedule_of(cron, every, tz)

        def add(task: str, periodic_name: str) -> Periodic:
            call = Envelope(id="", name=task, args=list(args), kwargs=dict(kwargs or {}))
            try:
                self.codec.encode(call)  # arguments that cannot be sent fail here, not later
            except (TypeError, ValueError, OverflowError) as exc:
                raise ConfigurationError(f"periodic {periodic_name!r}: arguments: {exc}") from None
            periodic = Periodic(periodic_name, task, schedule, tuple(args), call.kwargs, missed)
            self.periodics[periodic_name] = periodic
            return periodic

        def check(periodic_name: str) -> str:
            if periodic_name in self.periodics:
                raise ConfigurationError(f"a periodic named {periodic_name!r} exists: give name=")
            return periodic_name

        if isinstance(target, Task | str):
            if task_options:
                raise TypeError(f"task options {sorted(task_options)} go with a function")
            task = target.name if isinstance(target, Task) else target
            if task not in self.tasks:
                raise ConfigurationError(f"no task {task!r} is registered: register it first")
            return add(task, check(name or task))

        def decorate(fn: Callable[P, R]) -> Task[P, R]:
            check(name or default_name(fn))
            task: Task[P, R] = self.task(name=name, **task_options)(fn)
            add(task.name, task.name)
            return task

        return decorate if target is None else decorate(target)

    def register(
        self,
        name: str,
        fn: Callable[P, R],
        *,
        queue: str | None = None,
        priority: int = 0,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        expires: float | None = None,
        ignore_result: bool = False,
        boxed: bool = False,
        sinks: Sequence[str] = ("default",),
        retry: Retry | Literal["app"] | None = "app",
        dedupe: Callable[..., str | None] | None = None,
        breaker: CircuitBreaker | None = None,
        concurrency: int | Limit | None = None,
        rate_limit: str | RateLimit | None = None,
        **unsupported: Any,
    ) -> Task[P, R]:
        """Register any callable (or object with ``__call__``) as task ``name``."""
        for option in unsupported:
            area = _NOT_YET.get(option)
            if area is None:
                raise TypeError(f"unknown task option {option!r}")
            raise ConfigurationError(
                f"task option {option!r} belongs to {area}, which this version does not have yet"
            )
        if not callable(fn):
            raise TypeError(f"task {name!r} is not callable: {fn!r}")
        if boxed:
            _check_boxable(name, fn)
        if name in self.tasks and self.tasks[name].fn is not fn:
            raise ConfigurationError(f"a different task is already registered as {name!r}")
        unknown_sinks = set(sinks) - set(self.sink_urls)
        if unknown_sinks:
            raise ConfigurationError(f"task {name!r} names unknown sink(s) {sorted(unknown_sinks)}")
        _, routed_queue = self._route(name, queue)
        _check_time_limits(name, time_limit, soft_time_limit)
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ConfigurationError(f"task {name!r}: breaker must be a CircuitBreaker")
        if dedupe is not None and not callable(dedupe):
            raise ConfigurationError(f"task {name!r}: dedupe must be a function of the arguments")
        if not (retry is None or retry == "app" or isinstance(retry, Retry)):
            raise ConfigurationError(
                f"task {name!r}: retry must be a Retry, None (no retries) or 'app', not {retry!r}"
            )
        options = TaskOptions(
            queue=routed_queue or "default",
            priority=priority,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            retry=retry,
            dedupe=dedupe,
            breaker=breaker,
            concurrency=limit_of(concurrency),
            rate_limit=rate_limit_of(rate_limit),
            expires=expires,
            ignore_result=ignore_result,
            boxed=boxed,
            sinks=tuple(sinks),
        )
        if not 0 <= priority <= 9:
            raise ValueError(f"priority must be between 0 and 9, not {priority}")
        task: Task[P, R] = Task(self, name, fn, options)
        self.tasks[name] = task
        module = getattr(fn, "__module__", None)
        if module:
            self.errors.allow_module(module)
        return task

    def send_task(
        self,
        name: str,
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
    ) -> Result[Any]:
        """Call a task by name; the caller needs none of its code."""
        task = self.tasks.get(name)
        options = task.options if task is not None else TaskOptions()
        envelope = make_envelope(
            name,
            args,
            kwargs,
            options,
            countdown=countdown,
            eta=eta,
            expires=expires,
            priority=priority,
            queue=queue or (None if task is not None else self._route(name, None)[1]),
            task_id=task_id,
            headers=headers,
            ignore_result=ignore_result,
        )
        return self.publish(envelope)

    def publish(self, envelope: Envelope) -> Result[Any]:
        """Encode ``envelope`` and hand it to the publisher; never waits on the network."""
        url, _ = self._route(envelope.name, None)
        try:
            body = self.codec.encode(envelope)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"arguments of {envelope.name} cannot be serialized: {exc}") from exc
        message = Outgoing(
            queue=envelope.queue,
            id=envelope.id,
            body=body,
            priority=envelope.priority,
            eta=envelope.eta,
        )
        ticket = self._bridge.submit(url, message, expect_result=not envelope.ignore_result)
        return Result(self, envelope.id, envelope.name, ticket)

    def result(self, id: str) -> Result[Any]:
        """A handle on the result of task ``id``."""
        return Result(self, id)

    @overload
    def event(self, cls: type, /) -> EventType: ...

    @overload
    def event(
        self, cls: None = None, /, *, name: str | None = None, queue: str = "default"
    ) -> Callable[[type], EventType]: ...

    def event(
        self, cls: type | None = None, /, *, name: str | None = None, queue: str = "default"
    ) -> EventType | Callable[[type], EventType]:
        """Declare an event from a class with annotated fields (``@app.event``).

        Its name is ``module.QualName`` unless given; its messages go to ``queue``,
        where any worker of the app routes them to the subscribers (see
        :mod:`celeriac.tasks.event`).
        """

        def declare(target: type) -> EventType:
            event_name = name or f"{target.__module__}.{target.__qualname__}"
            if event_name in self.events:
                raise ConfigurationError(f"an event named {event_name!r} is already declared")
            declared = EventType(self, event_name, target, queue)
            self.events[event_name] = declared
            return declared

        return declare(cls) if cls is not None else declare

    def subscribe(self, event: EventType | str, task: Task[..., Any] | str) -> None:
        """Run ``task`` once for each event ``event`` (by type or by name), with the
        event's fields as keyword arguments. A worker that has ``task`` need not know
        the event's class: the name is enough."""
        event_name = event.name if isinstance(event, EventType) else event
        task_name = task if isinstance(task, str) else task.name
        subscribed = self.subscriptions.setdefault(event_name, [])
        if task_name not in subscribed:
            subscribed.append(task_name)

    def start(
        self,
        canvas: Canvas | Workflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        workflow_id: str | None = None,
        name: str | None = None,
    ) -> Result[Any]:
        """Start a canvas (chain, group, chord, map...) or a run of a :class:`Workflow`
        with ``inputs``: the result of the whole of it (its id is the run's id).

        Its normal form is stored in the default sink and its first steps are
        published; workers drive the rest (docs/canvas.md, "Running a canvas").
        Blocks until stored in sync code; inside a loop it is done in the
        background (use :meth:`start_async` to wait). Tasks are named, not needed
        here: a process that only knows the names can start a canvas.
        """
        graph = _graph_of(canvas, inputs, workflow_id, name)
        self._bridge.call_soon(self._start_graph, graph)
        return Result(self, graph.id, graph.workflow.name or "")

    async def start_async(
        self,
        canvas: Canvas | Workflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        workflow_id: str | None = None,
        name: str | None = None,
    ) -> Result[Any]:
        """:meth:`start`, awaited until the canvas is stored and its first steps sent."""
        graph = _graph_of(canvas, inputs, workflow_id, name)
        await self._bridge.call_async(self._start_graph, graph)
        return Result(self, graph.id, graph.workflow.name or "")

    def workflow_status(self, id: str) -> WorkflowRun | None:
        """Which steps of run ``id`` are pending, running, done, failed or skipped
        (``None``: no such run stored, or it expired)."""
        return self._bridge.call_sync(self._workflow_status, id)

    async def workflow_status_async(self, id: str) -> WorkflowRun | None:
        """:meth:`workflow_status` from async code."""
        return await self._bridge.call_async(self._workflow_status, id)

    async def _workflow_status(self, runtime: Runtime, id: str) -> WorkflowRun | None:
        from celeriac.router import Router

        return await Router(self, runtime).status(id)

    async def _start_graph(self, runtime: Runtime, graph: Graph) -> None:
        from celeriac.router import Router

        await Router(self, runtime).start(graph)

    # -- running -----------------------------------------------------------------

    def worker(self, **options: Any) -> Worker:
        """A worker for this app (see :class:`~celeriac.worker.Worker` for options)."""
        from celeriac.worker import Worker

        return Worker(self, **options)

    async def __aenter__(self) -> App:
        """Start this app's runtime in the current event loop (publisher, result waiter)."""
        from celeriac.runtime import loop_key

        key = loop_key()
        if key in self._stacks:
            raise RuntimeError(f"{self!r} is already started in this event loop")
        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        runtime = Runtime(self)
        await tg.start(runtime.run)
        self._bridge.attach(runtime)
        self._stacks[key] = (stack, runtime)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        from celeriac.runtime import loop_key

        stack, runtime = self._stacks.pop(loop_key())
        self._bridge.detach(runtime)
        await runtime.stop()
        await stack.aclose()

    def close(self) -> None:
        """Publish what is still in the background backlog, then stop it."""
        self._bridge.close()

    @contextmanager
    def testing(self, **worker_options: Any) -> Iterator[App]:
        """Switch to the memory broker and run an in-process worker for the block.

        Tasks go through the real machinery (serialization, worker, results), so
        ``add.delay(1, 2).get()`` works with no server and no second process.
        """
        saved = (self.settings, self.hub)
        self._bridge.close()
        self.settings = msgspec.structs.replace(
            self.settings,
            broker="memory://testing",
            sinks={"default": "memory://testing"},
            publisher_backlog=None,  # test messages never outlive the test
        )
        self.hub = Hub()
        worker_options.setdefault("grace", 5.0)
        worker_options.setdefault("heartbeat", 0.5)
        worker = self.worker(**worker_options)
        with anyio.from_thread.start_blocking_portal() as portal:
            future, _ = portal.start_task(worker.run)
            try:
                yield self
            finally:
                self._bridge.close()
                portal.call(worker.request_stop)
                future.result(timeout=30)
                self.settings, self.hub = saved

    # -- what Result and the CLI call, inside a runtime ---------------------------------

    def _runtime_here(self) -> Runtime:
        """The runtime started in the current event loop (``async with app:``)."""
        from celeriac.runtime import loop_key

        entry = self._stacks.get(loop_key())
        if entry is None:
            raise RuntimeError(f"{self!r} is not started in this event loop (async with app:)")
        return entry[1]

    def _outcome(self, doc: StoredDocument) -> Outcome:
        envelope = self.codec.decode(doc.body)
        try:
            return msgspec.convert(envelope.body, Outcome)
        except msgspec.ValidationError as exc:
            raise DecodeError(f"result document for {doc.id} is malformed: {exc}") from exc

    async def _state_of(self, runtime: Runtime, id: str) -> str:
        found = await runtime.sink.get([id])
        doc = found.get(id)
        return doc.state if doc is not None else PENDING

    async def _wait_value(self, runtime: Runtime, id: str, timeout: float | None) -> Any:
        assert runtime.results is not None
        doc = await runtime.results.wait(id, timeout)
        return value_of(self._outcome(doc), self.errors)

    def suspend(self, name: str) -> None:
        """Suspend task ``name`` on every worker: its messages wait in the broker (or, if
        fetched already, parked in the worker) until :meth:`resume`. Other tasks on the
        same queues keep flowing. Takes effect within about a second. Blocks until it
        is recorded in sync code; inside a loop it is sent in the background (use
        :meth:`suspend_async` to wait)."""
        self._bridge.call_soon(self._set_suspended, name, True)

    def resume(self, name: str) -> None:
        """End the suspension of task ``name`` on every worker (see :meth:`suspend`)."""
        self._bridge.call_soon(self._set_suspended, name, False)

    async def suspend_async(self, name: str) -> None:
        """:meth:`suspend`, awaited until it is recorded."""
        await self._bridge.call_async(self._set_suspended, name, True)

    async def resume_async(self, name: str) -> None:
        """:meth:`resume`, awaited until it is recorded."""
        await self._bridge.call_async(self._set_suspended, name, False)

    async def _set_suspended(self, runtime: Runtime, name: str, suspended: bool) -> None:
        from celeriac.worker.suspend import set_suspended

        await set_suspended(await runtime.coordination(), name, suspended)

    async def _revoke(self, runtime: Runtime, ids: Sequence[str]) -> None:
        from celeriac.tasks.outcome import document_for

        for broker in runtime.brokers.values():  # workers read revocations on every broker
            await broker.revoke(list(ids), self.settings.revoke_ttl)
        docs = []
        for id in ids:
            outcome = Outcome(
                state=REVOKED,
                error=ErrorInfo(type="TaskRevoked", module="celeriac.errors", message="revoked"),
            )
            body = self.codec.encode(document_for(Envelope(id=id, name=""), outcome))
            docs.append(StoredDocument(id=id, state=REVOKED, body=body))
        await runtime.sink.store_if_absent(docs, self.settings.result_ttl)

    async def _status(self, runtime: Runtime) -> dict[str, Any]:
        return {
            "queues": {q: s for q, s in (await runtime.broker.stats()).items()},
            "workers": await runtime.broker.workers(),
        }
