"""``Actor``, the base class, and ``_Runner``, the one task that lives each incarnation.

An incarnation of an actor is one task in its supervisor's task group, started with
``await task_group.start(runner.run)``. That task does everything, in order:

1. STARTING: make the actor (from its factory) and run ``on_start``. Resources go
   into ``self.resources``, an ``AsyncExitStack`` entered and closed by this task.
2. STARTED: open the mailbox and call ``task_status.started()``. Messages are handled
   one at a time; ``run`` (if the class defines it) runs alongside.
3. STOPPING: close the mailbox (pending asks fail with ActorNotRunning), run
   ``on_stop``, then close the exit stack.
4. STOPPED, or CRASHED when something raised, then report the exit to the parent.

Stopping is a cancel scope around step 2 (graceful); a second, outer cancel scope
is the hard kill used when the graceful stop takes longer than its timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from celeriac.errors import ActorError, ActorNotRunning

from ._ref import ActorRef, _Ask
from ._state import State

if TYPE_CHECKING:
    from ._system import ActorSystem

__all__ = ["Actor"]

M = TypeVar("M")
logger = logging.getLogger("celeriac.actors")


class Actor(Generic[M]):
    """Base class of every actor. Override the hooks you need.

    An actor owns its state and is reached only through its ``ActorRef``. A new
    instance is made for each start, so a restart begins from a clean slate.
    """

    mailbox_size: ClassVar[int] = 1024
    """How many messages the mailbox holds before ``tell`` waits."""

    _runner: _Runner | None = None
    _stack: AsyncExitStack | None = None

    @property
    def ref(self) -> ActorRef[M]:
        """This actor's own ref (available from ``on_start`` on)."""
        return self._bound().ref

    @property
    def system(self) -> ActorSystem:
        """The actor system this actor runs in, e.g. to ``lookup`` other actors."""
        return self._bound().system

    @property
    def resources(self) -> AsyncExitStack:
        """An exit stack owned by the actor's task, closed after ``on_stop``.

        Enter resources into it in ``on_start`` (``await
        self.resources.enter_async_context(...)``); they are released in reverse
        order when the actor stops or crashes, even if ``on_start`` fails halfway.
        """
        if self._stack is None:
            raise ActorError(f"{type(self).__name__} is not running")
        return self._stack

    async def on_start(self) -> None:
        """Acquire resources. The actor is STARTED when this returns.

        If it raises, the actor is CRASHED and its supervisor's start fails.
        """

    async def receive(self, message: M) -> Any:
        """Handle one message; the return value is the reply to an ``ask``.

        An exception from a told message crashes the actor; one from an asked
        message goes back to the asker instead.
        """
        raise ActorError(f"{type(self).__name__} does not handle messages")

    async def run(self) -> None:
        """An optional background loop, run alongside the mailbox while STARTED.

        Define it in a subclass to use it. If it returns, the actor keeps handling
        messages; if it raises, the actor crashes.
        """

    async def on_stop(self) -> None:
        """Release what ``on_start`` acquired (runs only if ``on_start`` finished).

        Runs in the actor's own task after the mailbox is closed, whether the actor
        was stopped or crashed.
        """

    def stop(self) -> None:
        """Ask this actor to stop normally (a normal exit, not a crash).

        Stopping is a cancel scope: the message handler or ``run`` loop in progress
        is cancelled, then ``on_stop`` runs. Shield what must not be interrupted.
        """
        self._bound().request_stop()

    def _bound(self) -> _Runner:
        if self._runner is None:
            raise ActorError(f"{type(self).__name__} is not running")
        return self._runner


ExitCallback = Callable[["_Runner", BaseException | None], None]


class _Runner:
    """Runs one incarnation of an actor in one task; reports its exit."""

    def __init__(
        self,
        ref: ActorRef[Any],
        factory: Callable[[], Actor[Any]],
        system: ActorSystem,
        on_exit: ExitCallback,
    ) -> None:
        self.ref = ref
        self.system = system
        self._factory = factory
        self._on_exit = on_exit
        self._stop_requested = False
        self._serve_scope: anyio.CancelScope | None = None
        self._kill_scope = anyio.CancelScope()
        self._failure: BaseException | None = None
        self.done = anyio.Event()

    def request_stop(self) -> None:
        """Stop gracefully: leave the mailbox loop once the current message is done."""
        self._stop_requested = True
        if self._serve_scope is not None:
            self._serve_scope.cancel()

    async def stop(self, grace: float) -> None:
        """Stop gracefully and wait; cancel everything if it takes over ``grace`` seconds."""
        self.request_stop()
        with anyio.move_on_after(grace):
            await self.done.wait()
            return
        logger.warning("%s did not stop within %ss: cancelling it", self.ref.path, grace)
        self._kill_scope.cancel()
        await self.done.wait()

    async def run(self, *, task_status: TaskStatus[ActorRef[Any]]) -> None:
        """The incarnation's task. Raises only before ``task_status.started()``."""
        ref = self.ref
        started = False
        try:
            with self._kill_scope:
                async with AsyncExitStack() as stack:
                    ref._set_state(State.STARTING)
                    actor = self._factory()
                    actor._runner, actor._stack = self, stack
                    # Errors are caught here, not let through the exit stack: a task
                    # group in it would wrap them in an exception group.
                    try:
                        await actor.on_start()
                    except Exception as exc:
                        self._fail(exc)
                    else:
                        if not self._stop_requested:
                            receive = self._open_mailbox(actor, stack)
                            ref._set_state(State.STARTED)
                            task_status.started(ref)
                            started = True
                            await self._serve(actor, receive)
                            _close_mailbox(ref, receive)
                        ref._set_state(State.STOPPING)
                        try:
                            await actor.on_stop()
                        except Exception as exc:
                            self._fail(exc)
        except Exception as exc:
            self._fail(exc)
        except BaseException as exc:
            # Cancelled from outside (our parent is being torn down): not a crash.
            crashed = self._failure is not None
            ref._set_state(State.CRASHED if crashed else State.STOPPED, self._failure)
            self.done.set()
            _break_context_cycle(exc)
            raise
        failure = self._failure
        ref._set_state(State.CRASHED if failure is not None else State.STOPPED, failure)
        self.done.set()
        if not started:
            if failure is not None:
                raise failure
            raise ActorNotRunning(f"{ref.path!r} was stopped before it started")
        if failure is not None:
            logger.error("%s crashed", ref.path, exc_info=failure)
        self._on_exit(self, failure)

    def _fail(self, exc: BaseException) -> None:
        # A task group the actor keeps in its resources wraps a failure in a group
        # of one; the failure itself says more, and its traceback is kept.
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if self._failure is None:
            self._failure = exc
        else:
            logger.error("%s: a second error while stopping", self.ref.path, exc_info=exc)

    def _open_mailbox(
        self, actor: Actor[Any], stack: AsyncExitStack
    ) -> MemoryObjectReceiveStream[Any]:
        send, receive = anyio.create_memory_object_stream[Any](actor.mailbox_size)
        stack.callback(send.close)
        stack.callback(_close_mailbox, self.ref, receive)
        self.ref._open(send)
        return receive

    async def _serve(self, actor: Actor[Any], receive: MemoryObjectReceiveStream[Any]) -> None:
        with anyio.CancelScope() as scope:
            self._serve_scope = scope
            if self._stop_requested:
                scope.cancel()
            if type(actor).run is not Actor.run:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._background, actor, scope)
                    await self._handle_messages(actor, receive, scope)
            else:
                await self._handle_messages(actor, receive, scope)
        self._serve_scope = None

    async def _background(self, actor: Actor[Any], scope: anyio.CancelScope) -> None:
        try:
            await actor.run()
        except Exception as exc:
            self._fail(exc)
            scope.cancel()

    async def _handle_messages(
        self,
        actor: Actor[Any],
        receive: MemoryObjectReceiveStream[Any],
        scope: anyio.CancelScope,
    ) -> None:
        # The hot loop: no task, no allocation per told message.
        next_message = receive.receive
        handle = actor.receive
        try:
            while True:
                message = await next_message()
                if type(message) is _Ask:
                    await self._answer(handle, message)
                else:
                    await handle(message)
        except Exception as exc:
            self._fail(exc)
            scope.cancel()

    async def _answer(self, handle: Callable[[Any], Awaitable[Any]], request: _Ask) -> None:
        try:
            request.value = await handle(request.message)
        except Exception as exc:
            request.error = exc
        except BaseException:
            request.error = ActorNotRunning(f"{self.ref.path!r} stopped while handling the ask")
            raise
        finally:
            request.done.set()


def _close_mailbox(ref: ActorRef[Any], receive: MemoryObjectReceiveStream[Any]) -> None:
    """Detach the mailbox, fail the asks still in it, and wake blocked senders."""
    ref._close()
    while True:
        try:
            message = receive.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            break
        if type(message) is _Ask:
            message.error = ActorNotRunning(f"{ref.path!r} stopped before handling the ask")
            message.done.set()
    receive.close()


def _break_context_cycle(exc: BaseException) -> None:
    """Cut a loop in ``exc``'s ``__context__`` chain.

    ``AsyncExitStack`` can tie a cancellation's context chain into a loop when a
    callback raises a new cancellation while an older one unwinds the stack, and
    anyio's asyncio backend walks that chain when the task ends: a loop there hangs
    the event loop. Seen with an exit stack holding a task group, on Python 3.11.
    """
    seen = {id(exc)}
    while exc.__context__ is not None:
        if id(exc.__context__) in seen:
            exc.__context__ = None
            return
        seen.add(id(exc.__context__))
        exc = exc.__context__
