"""Result: a handle on a published task's outcome, usable from sync and async code."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from celeriac.runtime import loop_key

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.publisher import Ticket

__all__ = ["Result"]

R = TypeVar("R")


class Result(Generic[R]):
    """The outcome of one task call.

    ``get(timeout)`` blocks (sync code); ``await result`` waits without blocking
    (asyncio or trio). Both return the task's value or raise its error, rebuilt as
    the same exception type where that type is trusted, else
    :class:`~celeriac.errors.TaskError`.

    ``confirmed()`` (sync) and ``await confirmed_async()`` tell whether the broker
    has accepted the task's message or it still waits in the publisher's backlog.
    """

    __slots__ = ("_ticket", "app", "id", "name")

    def __init__(self, app: App, id: str, name: str = "", ticket: Ticket | None = None) -> None:
        self.app = app
        self.id = id
        self.name = name
        self._ticket = ticket

    def __repr__(self) -> str:
        return f"<Result {self.name} {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result) and other.id == self.id and other.app is self.app

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def state(self) -> str:
        """PENDING, STARTED, RETRY, SUCCESS, FAILURE or REVOKED (a sync call)."""
        return self.app._bridge.call_sync(self.app._state_of, self.id)

    async def get_state(self) -> str:
        """:attr:`state`, for async code."""
        return await self.app._bridge.call_async(self.app._state_of, self.id)

    def get(self, timeout: float | None = None) -> R:
        """Wait for the task's value (or error), at most ``timeout`` seconds."""
        value: R = self.app._bridge.call_sync(self.app._wait_value, self.id, timeout)
        return value

    async def get_async(self, timeout: float | None = None) -> R:
        """:meth:`get` for async code (``await result`` does the same with no timeout)."""
        value: R = await self.app._bridge.call_async(self.app._wait_value, self.id, timeout)
        return value

    def confirmed(self, timeout: float | None = 0.0) -> bool:
        """Whether the broker has accepted this task's message (False: it is still in
        the publisher's backlog), waiting for that at most ``timeout`` seconds.

        The default ``0`` only looks, and works anywhere. A wait (``timeout`` other
        than 0; ``None`` waits until accepted) blocks, so inside an event loop it raises
        ``RuntimeError``: use :meth:`confirmed_async` there. Only a Result returned by
        ``delay()``, ``apply_async()`` or ``send_task()`` knows; one from
        ``app.result(id)`` raises ``RuntimeError``.
        """
        ticket = self._known_ticket()
        if ticket.accepted or timeout == 0:
            return ticket.accepted
        if loop_key() is not None:
            raise RuntimeError(
                "this call blocks; inside async code use await result.confirmed_async(timeout)"
            )
        return ticket.wait(timeout)

    async def confirmed_async(self, timeout: float | None = None) -> bool:
        """:meth:`confirmed` for async code; ``None`` (the default) waits until accepted."""
        ticket = self._known_ticket()
        if ticket.accepted or timeout == 0:
            return ticket.accepted
        return await ticket.wait_async(timeout)

    def _known_ticket(self) -> Ticket:
        if self._ticket is None:
            raise RuntimeError(
                f"{self!r} was not published by this process: only a Result returned by "
                "delay(), apply_async() or send_task() knows whether its message was confirmed"
            )
        return self._ticket

    def __await__(self) -> Generator[Any, None, R]:
        return self.get_async().__await__()

    def ready(self) -> bool:
        """Whether the task has finished (succeeded, failed or was revoked)."""
        return self.state in ("SUCCESS", "FAILURE", "REVOKED")

    def successful(self) -> bool:
        """Whether the task finished with a value."""
        return self.state == "SUCCESS"

    def failed(self) -> bool:
        """Whether the task finished with an error."""
        return self.state == "FAILURE"

    def revoke(self) -> None:
        """Cancel the task: if not started it never runs; if running it is cancelled.

        From sync code this returns once the revocation is recorded; inside an
        event loop it does not block: the revocation is sent in the background
        (``await result.revoke_async()`` to wait for it).
        """
        self.app._bridge.call_soon(self.app._revoke, [self.id])

    async def revoke_async(self) -> None:
        """:meth:`revoke` for async code."""
        await self.app._bridge.call_async(self.app._revoke, [self.id])
