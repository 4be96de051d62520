"""The messages backlog (CEP "Messages Backlog"): where messages wait for their broker.

A :class:`Ticket` is one message's place in a backlog: the broker URL, the
message, and whether the broker has accepted it yet. The caller of
:meth:`~celeriac.publisher.Publisher.submit` keeps the ticket (a
:class:`~celeriac.Result` holds it) to learn when its message is confirmed; the
publisher flips ``accepted`` and wakes waiters through the publisher's
:class:`Confirmations`. A ticket is the backlog's entry itself, so confirmations
cost no allocation beyond the one every submit makes anyway.

Two backlogs:

* :class:`MemoryBacklog` (the default): a deque. ``append`` is the deque's own
  method, so the hot path is one C call.
* :class:`~celeriac.publisher.disk.SqliteBacklog`: the same deque, plus every
  message written to a SQLite file before ``append`` returns and deleted only once
  its broker accepted it, so messages survive a crash of the publishing process.

:func:`open_backlog` makes one from the ``publisher_backlog`` setting.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Protocol

import anyio
import msgspec

from celeriac._notify import Notifier
from celeriac.abc import Outgoing
from celeriac.errors import ConfigurationError

__all__ = ["Backlog", "Confirmations", "MemoryBacklog", "Ticket", "open_backlog"]


class Ticket(msgspec.Struct, gc=False):
    """One message in a backlog, and whether its broker has accepted it.

    ``row`` is the message's row in a durable backlog (``None`` in memory).
    Once ``accepted``, ``message`` is dropped (set to ``None``) so a kept
    :class:`~celeriac.Result` does not keep the message body alive.
    """

    # gc=False: a ticket never takes part in a reference cycle (it points at its
    # message and at the publisher's Confirmations, neither of which points back),
    # and the garbage collector need not track one object per message.
    url: str
    message: Outgoing | None
    confirmations: Confirmations | None = None
    row: int | None = None
    accepted: bool = False

    def wait(self, timeout: float | None) -> bool:
        """Block until accepted, at most ``timeout`` seconds; whether it was accepted."""
        if self.accepted or self.confirmations is None:
            return self.accepted
        return self.confirmations.wait(self, timeout)

    async def wait_async(self, timeout: float | None) -> bool:
        """:meth:`wait` for async code (any loop: asyncio or trio, any thread)."""
        if self.accepted or self.confirmations is None:
            return self.accepted
        return await self.confirmations.wait_async(self, timeout)


class Confirmations:
    """Wakes whoever waits for tickets of one publisher: sync threads and any loop.

    The publisher calls :meth:`notify` once per batch, never per message.
    """

    __slots__ = ("_condition", "notifier")

    def __init__(self) -> None:
        self.notifier = Notifier()
        self._condition = threading.Condition()

    @staticmethod
    def mark(tickets: Iterable[Ticket]) -> None:
        """Mark ``tickets`` accepted by their broker (then :meth:`notify` wakes waiters)."""
        for ticket in tickets:
            ticket.accepted = True
            ticket.message = None

    def notify(self) -> None:
        """Wake every waiter to look again (after any progress of the publisher)."""
        self.notifier.notify()
        with self._condition:
            self._condition.notify_all()

    def wait(self, ticket: Ticket, timeout: float | None) -> bool:
        """Block the calling thread until ``ticket`` is accepted or ``timeout`` passed."""
        with self._condition:
            return self._condition.wait_for(lambda: ticket.accepted, timeout)

    async def wait_async(self, ticket: Ticket, timeout: float | None) -> bool:
        """Wait in the calling loop until ``ticket`` is accepted or ``timeout`` passed."""
        with anyio.move_on_after(timeout):
            while True:
                version = self.notifier.version
                if ticket.accepted:
                    break
                await self.notifier.wait(version)
        return ticket.accepted


class Backlog(Protocol):
    """Where a publisher's messages wait, oldest first, until their broker accepts them.

    ``append`` is called from any thread; everything else from the publisher's loop.
    """

    durable: bool
    """Whether messages survive the end of the process (then ``close`` keeps them)."""

    append: Callable[[Ticket], None]
    """Add a ticket at the back (any thread; never raises for a store failure)."""

    def open(self, urls: Collection[str]) -> None:
        """Blocking: get ready; a durable backlog takes over messages for ``urls`` left
        by processes that stopped, to be sent first."""

    def close(self) -> None:
        """Blocking: release the store (a durable one keeps what was not sent)."""

    def __len__(self) -> int:
        """How many messages wait (not counting a batch taken and not given back)."""

    def take(self, limit: int) -> list[Ticket]:
        """Remove and return up to ``limit`` tickets from the front."""

    def give_back(self, tickets: Sequence[Ticket]) -> None:
        """Put ``tickets`` (not accepted) back at the front, in their order."""

    async def remove(self, tickets: Sequence[Ticket]) -> None:
        """Forget ``tickets`` for good: their broker accepted them."""


class MemoryBacklog:
    """A backlog in memory: fast, unbounded, lost with the process."""

    durable = False

    def __init__(self) -> None:
        self._items: deque[Ticket] = deque()
        self.append: Callable[[Ticket], None] = self._items.append

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._items)} waiting>"

    def open(self, urls: Collection[str]) -> None:
        """Nothing to open."""

    def close(self) -> None:
        """Nothing to release (what is still here is lost)."""

    def __len__(self) -> int:
        return len(self._items)

    def take(self, limit: int) -> list[Ticket]:
        """Remove and return up to ``limit`` tickets from the front."""
        items = self._items
        return [items.popleft() for _ in range(min(limit, len(items)))]

    def give_back(self, tickets: Sequence[Ticket]) -> None:
        """Put ``tickets`` back at the front, in their order."""
        self._items.extendleft(reversed(tickets))

    async def remove(self, tickets: Sequence[Ticket]) -> None:
        """Nothing to forget: taken tickets are already out of memory."""


def open_backlog(spec: str | None) -> Backlog:
    """The backlog the ``publisher_backlog`` setting names (nothing is opened yet).

    ``None``, ``""`` or ``memory://``: in memory. ``sqlite:///path.db`` (options:
    ``synchronous=normal|full``, ``busy_timeout``) or a plain file path: a SQLite file.
    """
    if not spec or spec == "memory://":
        return MemoryBacklog()
    from celeriac.publisher.disk import SqliteBacklog

    if "://" not in spec:
        return SqliteBacklog(spec)
    if spec.partition("://")[0].lower() != "sqlite":
        raise ConfigurationError(
            f"publisher_backlog {spec!r}: use memory://, sqlite:///path.db or a file path"
        )
    return SqliteBacklog.from_url(spec)
