"""The app's live side in one event loop, and the bridge that finds it for a caller.

An :class:`App` is plain configuration; I/O happens in a :class:`Runtime`: the
broker and sink connections, the publisher coroutine and the result waiter of
one event loop. A caller gets a runtime through the :class:`Bridge`:

* inside a loop where the app was started (``async with app:``, a worker,
  ``celeriac dev``), that loop's runtime, directly;
* anywhere else (plain sync code, or a loop where the app was not started), the
  app's background runtime: one daemon thread running its own loop, reached
  through an anyio blocking portal, started on first use and flushed at exit.

So every call that does I/O works from sync code and from asyncio or trio code
without the user picking a different function.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
import logging
import sys
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread

from celeriac._notify import Notifier
from celeriac.abc import Broker, Coordinator, DataSink, StoredDocument
from celeriac.actors import ActorSystem, Backoff, ChildSpec, ServiceActor, Supervisor, actor_system
from celeriac.brokers import open_broker
from celeriac.brokers._deferred import Deferred, connect_or_defer
from celeriac.brokers._url import scheme_of
from celeriac.coordination import open_coordinator
from celeriac.errors import BrokerError, ResultTimeout
from celeriac.publisher import Publisher, Ticket, open_backlog
from celeriac.sinks import open_sink

if TYPE_CHECKING:
    from celeriac.app import App

__all__ = ["Bridge", "Runtime", "loop_key"]

log = logging.getLogger("celeriac.runtime")

T = TypeVar("T")


def loop_key() -> object | None:
    """An identity for the event loop running in this thread, or None outside one.

    Called on every publish and result wait, so it avoids sniffio's slower path.
    """
    loop = asyncio._get_running_loop()
    if loop is not None:
        return loop
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            token: object = trio.lowlevel.current_trio_token()
            return token
        except RuntimeError:
            return None
    return None


class _Waiter:
    __slots__ = ("doc", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.doc: StoredDocument | None = None


class ResultWaiter:
    """One loop per runtime that resolves every result wait, in batches.

    Awaiting results one after another (``for r in results: await r``) would
    cost one round trip to the sink each. So the loop also reads ahead: results
    of tasks published from this runtime that nobody waits for *yet* are
    fetched in the same round trip and kept in a bounded cache, where the next
    ``await`` finds them without any I/O.
    """

    def __init__(
        self,
        sink: DataSink,
        states: frozenset[str],
        *,
        batch: int = 1024,
        cache_size: int = 20_000,
        expect_size: int = 200_000,
    ) -> None:
        self.sink = sink
        self.states = states
        self.batch = batch
        self.cache_size = cache_size
        self.expect_size = expect_size
        self._pending: dict[str, list[_Waiter]] = {}
        self._cache: OrderedDict[str, StoredDocument] = OrderedDict()
        self._published: deque[str] = deque()  # appended from any thread
        self._expected: OrderedDict[str, None] = OrderedDict()
        self._changed = Notifier()

    def expect(self, id: str) -> None:
        """A task whose result may be awaited was published here (any thread)."""
        self._published.append(id)

    async def wait(self, id: str, timeout: float | None) -> StoredDocument:
        """The terminal document for ``id``, waiting at most ``timeout`` seconds."""
        doc = self._cache.pop(id, None)
        if doc is not None:
            return doc
        waiter = _Waiter()
        self._pending.setdefault(id, []).append(waiter)
        self._changed.notify()
        try:
            if timeout is None:
                await waiter.event.wait()
            else:
                with anyio.fail_after(timeout):
                    await waiter.event.wait()
        except TimeoutError:
            raise ResultTimeout(f"no result for task {id} within {timeout}s") from None
        finally:
            waiters = self._pending.get(id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._pending[id]
        assert waiter.doc is not None
        return waiter.doc

    def _batch_ids(self) -> list[str]:
        expected, published = self._expected, self._published
        while published:
            expected[published.popleft()] = None
        while len(expected) > self.expect_size:
            expected.popitem(last=False)
        ids = list(itertools.islice(self._pending, self.batch))
        room = self.batch - len(ids)
        if room > 0:
            ids.extend(i for i in itertools.islice(expected, room) if i not in self._pending)
        return ids

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Resolve pending waits, oldest first, reading ahead in the same round trip."""
        backoff = 0.1
        task_status.started()
        while True:
            version = self._changed.version
            if not self._pending:
                await self._changed.wait(version)
                continue
            try:
                found = await self.sink.wait(self._batch_ids(), 0.1, self.states)
            except BrokerError as exc:  # the sink is away: waits go on, and so do we
                log.warning("reading results failed, retrying in %.1fs: %s", backoff, exc)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            cache = self._cache
            for id, doc in found.items():
                self._expected.pop(id, None)
                waiters = self._pending.pop(id, None)
                if waiters:
                    for waiter in waiters:
                        waiter.doc = doc
                        waiter.event.set()
                else:
                    cache[id] = doc
            while len(cache) > self.cache_size:
                cache.popitem(last=False)


class Runtime:
    """Connections, publisher and result waiter of an app in one event loop."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.brokers: dict[str, Broker] = {}
        self.sinks: dict[str, DataSink] = {}
        self.publisher: Publisher | None = None
        self.results: ResultWaiter | None = None
        self.loop: object | None = None
        self._cancel: anyio.CancelScope | None = None
        self.system: ActorSystem | None = None
        self._background_calls: anyio.abc.TaskGroup | None = None
        self.flush_timeout = 10.0
        self.connect_wait = 3.0  # seconds a network server may take to answer at start
        self._deferred: list[Deferred] = []
        self._coordinator: Coordinator | None = None
        self._coordinator_opening: anyio.Event | None = None
        self.publish_timeout = 10.0

    @property
    def broker(self) -> Broker:
        """The app's default broker."""
        return self.brokers[self.app.broker_url]

    @property
    def sink(self) -> DataSink:
        """The app's default sink (where results are read)."""
        return self.sinks["default"]

    async def open(self) -> None:
        """Connect to every broker and sink of the app.

        A network server that does not answer within ``connect_wait`` seconds does not
        stop the start: its backend is :class:`~celeriac.brokers._deferred.Deferred`,
        connected in the background while messages wait in the backlog.
        """
        hub = self.app.hub
        for url in self.app.broker_urls:
            broker, later = await connect_or_defer(
                functools.partial(open_broker, url, hub), url, scheme_of(url), self.connect_wait
            )
            self.brokers[url] = broker
            self._deferred += [later] if later is not None else []
        for name, url in self.app.sink_urls.items():
            sink, later = await connect_or_defer(
                functools.partial(open_sink, url, hub), url, scheme_of(url), self.connect_wait
            )
            self.sinks[name] = sink
            self._deferred += [later] if later is not None else []

    async def _reconnect(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        async with anyio.create_task_group() as tg:
            for deferred in self._deferred:
                tg.start_soon(deferred.keep_connecting)
        await anyio.sleep_forever()

    async def coordination(self) -> Coordinator:
        """The app's coordinator (``App.coordinator_url``), connected on first use."""
        while self._coordinator is None:
            if self._coordinator_opening is not None:
                await self._coordinator_opening.wait()
                continue
            self._coordinator_opening = opening = anyio.Event()
            try:
                coordinator = open_coordinator(self.app.coordinator_url, self.app.hub)
                await coordinator.connect()
                self._coordinator = coordinator
            finally:
                self._coordinator_opening = None
                opening.set()
        return self._coordinator

    async def close(self) -> None:
        """Close every connection (the publisher must have been drained first)."""
        if self._coordinator is not None:
            with anyio.CancelScope(shield=True):
                await self._coordinator.close()
            self._coordinator = None
        for sink in self.sinks.values():
            with anyio.CancelScope(shield=True):
                await sink.close()
        for broker in self.brokers.values():
            with anyio.CancelScope(shield=True):
                await broker.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Runtime]:
        """Open connections and run the publisher and result waiter for the block.

        On exit the publisher is flushed (bounded) and connections are closed, even
        when the block is cancelled, so work done inside the block is not cut off.
        """
        from celeriac.tasks.outcome import TERMINAL

        self.loop = loop_key()
        backlog = open_backlog(self.app.settings.publisher_backlog)
        await self.open()
        try:
            # A durable backlog takes over what a stopped process left, to be sent first.
            await anyio.to_thread.run_sync(backlog.open, list(self.brokers))
            publisher = self.publisher = Publisher(
                self.brokers, backlog=backlog, timeout=self.publish_timeout
            )
            results = self.results = ResultWaiter(self.sink, TERMINAL)
            # Both loops are actors: a crash restarts the loop, and the backlog and
            # pending waits (kept in the objects) carry over.
            root = Supervisor(
                [
                    ChildSpec(
                        "publisher",
                        lambda: ServiceActor(publisher.run, self._flush),
                        shutdown_timeout=self.flush_timeout + 5,
                    ),
                    ChildSpec("results", lambda: ServiceActor(results.run)),
                    ChildSpec("reconnect", lambda: ServiceActor(self._reconnect)),
                ],
                max_restarts=10,
                period=60.0,
                backoff=Backoff(0.05, 5.0),
            )
            async with (
                actor_system(root, name="runtime") as self.system,
                anyio.create_task_group() as self._background_calls,
            ):
                yield self
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(backlog.close)
                await self.close()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until :meth:`stop` or cancellation (see :meth:`running`)."""
        with anyio.CancelScope() as self._cancel:
            async with self.running():
                task_status.started()
                await anyio.sleep_forever()

    async def _flush(self) -> None:
        await self.stop(self.flush_timeout)

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush the publisher (at most ``timeout`` seconds), then stop :meth:`run`."""
        if self.publisher is not None and not await self.publisher.flush(timeout):
            _report_unsent(self.publisher, "shutdown")
        if self._cancel is not None:
            self._cancel.cancel()


class Bridge:
    """Finds or starts the runtime for the calling context."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._loops: dict[object, Runtime] = {}
        self._lock = threading.Lock()
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._background: Runtime | None = None
        self._thread: threading.Thread | None = None
        self._last_background: Runtime | None = None

    def attach(self, runtime: Runtime) -> None:
        """Make ``runtime`` the one callers in its loop use (the first one attached wins)."""
        self._loops.setdefault(runtime.loop, runtime)

    def detach(self, runtime: Runtime) -> None:
        """Forget ``runtime`` (it is stopping)."""
        if self._loops.get(runtime.loop) is runtime:
            del self._loops[runtime.loop]

    def here(self) -> Runtime | None:
        """The runtime started in the calling loop, if any."""
        if not self._loops:
            return None
        return self._loops.get(loop_key())

    def _start_background(self) -> tuple[anyio.from_thread.BlockingPortal, Runtime]:
        with self._lock:
            if self._portal is not None and self._background is not None:
                return self._portal, self._background
            ready = threading.Event()
            runtime = Runtime(self.app)
            failure: list[BaseException] = []

            async def main() -> None:
                try:
                    async with (
                        anyio.from_thread.BlockingPortal() as portal,
                        anyio.create_task_group() as tg,
                    ):
                        await tg.start(runtime.run)
                        self._portal = portal
                        self._background = runtime
                        ready.set()
                        await portal.sleep_until_stopped()
                        tg.cancel_scope.cancel()
                except BaseException as exc:
                    failure.append(exc)
                    ready.set()
                    raise

            def target() -> None:
                try:
                    anyio.run(main)
                except BaseException:  # reported to the caller through `failure`
                    pass

            thread = threading.Thread(target=target, name=f"celeriac-{self.app.name}", daemon=True)
            thread.start()
            ready.wait()
            if failure:
                error = failure[0]
                while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
                    error = error.exceptions[0]
                raise error
            assert self._portal is not None
            self._thread = thread
            self._last_background = runtime
            atexit.register(self.close)
            return self._portal, runtime

    def submit(self, broker_url: str, message: Any, expect_result: bool = True) -> Ticket:
        """Hand an encoded message to the publisher of the calling context.

        The ticket it returns says when the broker has accepted the message.
        """
        runtime = self.here()
        if runtime is None:
            _, runtime = self._start_background()
        assert runtime.publisher is not None
        assert runtime.results is not None
        if expect_result:
            runtime.results.expect(message.id)
        return runtime.publisher.submit(broker_url, message)

    def call_sync(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(runtime, *args)`` from sync code and return its value."""
        if loop_key() is not None:
            raise RuntimeError(
                "this call blocks; inside async code use its async form "
                "(await result, await result.get_async(), await result.revoke_async())"
            )
        portal, runtime = self._start_background()
        return portal.call(fn, runtime, *args)

    def call_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``fn(runtime, *args)``: blocking in sync code, in the background in a loop."""
        if loop_key() is None:
            self.call_sync(fn, *args)
            return
        runtime = self.here()
        if runtime is not None and runtime._background_calls is not None:
            runtime._background_calls.start_soon(fn, runtime, *args)
            return
        portal, background = self._start_background()
        portal.start_task_soon(fn, background, *args)

    async def call_async(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(runtime, *args)`` from async code, in this loop's runtime if any."""
        runtime = self.here()
        if runtime is not None:
            return await fn(runtime, *args)
        portal, background = self._start_background()

        def blocking() -> T:
            return portal.call(fn, background, *args)

        return await anyio.to_thread.run_sync(blocking, abandon_on_cancel=True)

    def close(self, timeout: float = 10.0) -> None:
        """Flush and stop the background runtime, if it was started."""
        with self._lock:
            portal, self._portal = self._portal, None
            thread, self._thread = self._thread, None
            self._background = None
        atexit.unregister(self.close)
        if portal is None or thread is None:
            return
        try:
            portal.call(_flush, self._last_background, timeout)
            portal.call(portal.stop)
        except RuntimeError:  # the loop is already gone
            pass
        thread.join(timeout)


async def _flush(runtime: Runtime | None, timeout: float) -> None:
    publisher = runtime.publisher if runtime is not None else None
    if publisher is not None and not await publisher.flush(timeout):
        _report_unsent(publisher, "exit")


def _report_unsent(publisher: Publisher, when: str) -> None:
    backlog = publisher.backlog
    if backlog.durable:
        log.warning(
            "%d message(s) not published at %s: the broker did not accept them; they stay "
            "in the backlog file %s and the next process using it sends them",
            len(publisher),
            when,
            getattr(backlog, "path", "?"),
        )
    else:
        log.error(
            "%d message(s) not published at %s: the broker did not accept them; they are "
            "lost with the in-memory backlog",
            len(publisher),
            when,
        )
