"""``ActorRef``: the only handle others hold on an actor.

A ref names one slot of the supervision tree (its ``path``) and stays valid across
restarts: each incarnation of the actor attaches a fresh mailbox to it while it is
STARTED and detaches it when it stops. Senders never touch the actor object.

The mailbox is an anyio memory object stream. A told message is put in it as is;
an asked message is wrapped in a small ``_Ask`` record that carries the reply back.
Nothing is spawned per message.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from celeriac.errors import ActorNotRunning, ActorTimeout, AskTimeout, MailboxFull

from ._state import TERMINAL, State, can_transition

__all__ = ["ActorRef"]

M = TypeVar("M")

_CLOSED = (anyio.BrokenResourceError, anyio.ClosedResourceError)


class _Ask:
    """An asked message and the slot its reply comes back in."""

    __slots__ = ("done", "error", "message", "value")

    def __init__(self, message: object) -> None:
        self.message = message
        self.done = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class _Waiter:
    """One ``wait_for`` call: resolved synchronously by the transition it waits for."""

    __slots__ = ("done", "outcome", "wanted")

    def __init__(self, wanted: frozenset[State]) -> None:
        self.wanted = wanted
        self.done = anyio.Event()
        self.outcome: State | None = None


class ActorRef(Generic[M]):
    """A handle on an actor: its name, state, and its mailbox while it runs.

    Refs are made by the actor system, one per path, and stay the same across
    restarts, so a ref taken once keeps reaching the current incarnation.
    """

    __slots__ = ("_failure", "_restarts", "_send", "_state", "_waiters", "name", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        """The slash-separated path from the root, e.g. ``"root/worker/consumer"``."""
        self.name = path.rpartition("/")[2]
        """The last part of the path: the name in the parent's child specs."""
        self._state = State.INITIALIZING
        self._failure: BaseException | None = None
        self._restarts = -1
        self._send: MemoryObjectSendStream[Any] | None = None
        self._waiters: list[_Waiter] = []

    def __repr__(self) -> str:
        return f"<ActorRef {self.path} {self._state.name}>"

    @property
    def state(self) -> State:
        """The actor's current lifecycle state."""
        return self._state

    @property
    def failure(self) -> BaseException | None:
        """The exception that last crashed this actor, or None if it never crashed."""
        return self._failure

    @property
    def restarts(self) -> int:
        """How many times the actor was started again after its first start."""
        return max(self._restarts, 0)

    async def tell(self, message: M) -> None:
        """Put ``message`` in the mailbox, waiting while it is full (backpressure).

        Returns once the message is in the mailbox. Messages still there when the
        actor stops are dropped (asked ones fail with ActorNotRunning). Raises
        ActorNotRunning if the actor is not STARTED.
        """
        send = self._send
        if send is None:
            raise self._not_running()
        try:
            await send.send(message)
        except _CLOSED:
            raise self._not_running() from None

    def try_tell(self, message: M) -> None:
        """Put ``message`` in the mailbox now, or raise MailboxFull if it is full.

        Raises ActorNotRunning if the actor is not STARTED.
        """
        send = self._send
        if send is None:
            raise self._not_running()
        try:
            send.send_nowait(message)
        except anyio.WouldBlock:
            raise MailboxFull(f"the mailbox of {self.path!r} is full") from None
        except _CLOSED:
            raise self._not_running() from None

    async def ask(self, message: M, *, timeout: float = 5.0) -> Any:
        """Send ``message`` and return what the actor's ``receive`` returns for it.

        ``timeout`` covers waiting for room in the mailbox and for the reply; when it
        runs out, AskTimeout is raised (the message may still be handled later). An
        exception raised by the handler is re-raised here, and does not crash the
        actor. Raises ActorNotRunning if the actor is not STARTED or stops first.
        """
        send = self._send
        if send is None:
            raise self._not_running()
        request = _Ask(message)
        with anyio.move_on_after(timeout):
            try:
                await send.send(request)
            except _CLOSED:
                raise self._not_running() from None
            await request.done.wait()
        if not request.done.is_set():
            raise AskTimeout(f"{self.path!r} did not reply within {timeout}s")
        if request.error is not None:
            raise request.error
        return request.value

    async def wait_for(
        self,
        *states: State,
        timeout: float | None = None,
    ) -> State:
        """Wait until the actor is in one of ``states`` (default: STARTED); return it.

        Returns at once if it already is. Every transition is seen, however briefly
        the actor stays in a state. If, while we wait, the actor ends in STOPPED or
        CRASHED and that is not one of ``states``, ActorNotRunning is raised (with
        the crash as its cause). An actor that has already ended when this is called
        may still be restarted by its supervisor, so the wait goes on; bound it with
        ``timeout`` (seconds), after which ActorTimeout (a TimeoutError) is raised.
        """
        wanted = frozenset(states) if states else frozenset({State.STARTED})
        if self._state in wanted:
            return self._state
        waiter = _Waiter(wanted)
        self._waiters.append(waiter)
        try:
            with anyio.move_on_after(timeout) as scope:
                await waiter.done.wait()
            if scope.cancelled_caught:
                names = " or ".join(sorted(state.name for state in wanted))
                raise ActorTimeout(f"{self.path!r} did not reach {names} within {timeout}s")
        finally:
            self._waiters.remove(waiter)
        outcome = waiter.outcome
        assert outcome is not None
        if outcome in wanted:
            return outcome
        names = " or ".join(sorted(state.name for state in wanted))
        what = "crashed" if outcome is State.CRASHED else "stopped"
        raise ActorNotRunning(
            f"{self.path!r} {what} while waiting for {names}"
            + (f": {self._failure!r}" if outcome is State.CRASHED else "")
        ) from (self._failure if outcome is State.CRASHED else None)

    def _not_running(self) -> ActorNotRunning:
        return ActorNotRunning(f"{self.path!r} is not running (state {self._state.name})")

    # The methods below are called only from the actor's own task.

    def _set_state(self, new: State, failure: BaseException | None = None) -> None:
        if not can_transition(self._state, new):
            raise RuntimeError(f"{self.path}: illegal transition {self._state.name} -> {new.name}")
        if new is State.STARTING:
            self._restarts += 1
        if failure is not None:
            self._failure = failure
        self._state = new
        for waiter in self._waiters:
            if waiter.outcome is None and (new in waiter.wanted or new in TERMINAL):
                waiter.outcome = new
                waiter.done.set()

    def _open(self, send: MemoryObjectSendStream[Any]) -> None:
        self._send = send

    def _close(self) -> None:
        self._send = None
