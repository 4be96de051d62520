"""Interfaces for backend authors: :class:`Broker`, :class:`DataSink`.

A broker moves opaque, already-encoded message bodies between queues. It never
decodes a body: everything it needs to schedule a message (queue, priority, eta,
id) travels beside the body in :class:`Outgoing`. That keeps every backend small
and lets the envelope evolve without touching brokers.

The contract, which :mod:`celeriac.testing.conformance` checks on every backend:

* **At-least-once.** A message handed out by :meth:`Broker.fetch` stays owned by
  the broker until :meth:`Broker.ack`. If the consumer dies (or simply does not
  ack within the visibility timeout and does not :meth:`Broker.extend` it), the
  message is handed out again with ``deliveries`` incremented.
* **Priorities.** Within one queue, among messages that are due, higher
  ``priority`` comes first; equal priorities come in publish order.
* **Delays.** A message whose ``eta`` is in the future is not handed out before it.
* **Revocation.** A message whose id was passed to :meth:`Broker.revoke` before it
  was fetched is never handed out; it is dropped by the broker.
* **Dead letters.** :meth:`Broker.dead_letter` moves a delivery, with its reason,
  to a store that can be listed and replayed; replay re-publishes the original
  body unchanged.

Every method is a coroutine and is called from one event loop: the loop of the
runtime that opened the backend. A backend object is made by the scheme registry
(:mod:`celeriac.brokers`) from a URL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = [
    "Broker",
    "Coordinator",
    "DataSink",
    "DeadLetter",
    "Delivery",
    "Outgoing",
    "QueueStats",
    "StoredDocument",
    "WorkerInfo",
]


class Outgoing(msgspec.Struct, frozen=True):
    """A message on its way to a broker.

    ``body`` is the encoded envelope (see ``docs/protocol.md``). ``eta`` is a unix
    timestamp (seconds) before which the message must not be delivered, or ``None``.
    ``priority`` is 0-9, higher first.
    """

    queue: str
    id: str
    body: bytes
    priority: int = 0
    eta: float | None = None


class Delivery(msgspec.Struct):
    """A message handed to a consumer by :meth:`Broker.fetch`.

    ``deliveries`` counts how many times the broker has handed this message out,
    this time included (1 on the first delivery). ``receipt`` is the backend's own
    handle for ack/nack/extend (a row id, a stream entry id, a delivery tag...);
    consumers treat it as opaque.
    """

    queue: str
    id: str
    body: bytes
    deliveries: int
    receipt: Any
    priority: int = 0


class QueueStats(msgspec.Struct, frozen=True):
    """Counts for one queue: due now, waiting for their eta, handed out and not acked."""

    ready: int
    delayed: int
    in_flight: int


class DeadLetter(msgspec.Struct, frozen=True):
    """A message moved aside with the reason it could not be processed."""

    id: str
    queue: str
    body: bytes
    reason: str
    at: float
    deliveries: int


class WorkerInfo(msgspec.Struct, frozen=True):
    """What a live worker reports about itself (see :meth:`Broker.heartbeat`)."""

    name: str
    host: str
    pid: int
    queues: list[str]
    started_at: float
    seen_at: float
    running: int = 0
    processed: int = 0
    failed: int = 0
    loop: str = "asyncio"
    capacity: int = 0  #: the most tasks it may run at once (its budgets' maxima); 0: unknown


class StoredDocument(msgspec.Struct, frozen=True):
    """A document as a sink keeps it: its id, a short state tag, and the encoded body."""

    id: str
    state: str
    body: bytes


@runtime_checkable
class Broker(Protocol):
    """A message broker backend. See the module docstring for the contract."""

    url: str

    async def connect(self) -> None:
        """Open connections and declare what the backend needs (tables, streams...)."""

    async def close(self) -> None:
        """Release connections. Deliveries not yet acked return to their queue eventually."""

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Store ``messages`` durably; return only once the broker has accepted all of them."""

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Hand out up to ``limit`` due messages from ``queues``.

        Waits up to ``timeout`` seconds for the first one; returns an empty list if
        none came. Queues listed first are preferred when several have messages of
        the same priority.
        """

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Forget these deliveries for good: they have been processed."""

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        """Return these deliveries to their queue, due again after ``delay`` seconds."""

    async def extend(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Keep these deliveries owned by this consumer for ``seconds`` more."""

    async def dead_letter(self, deliveries: Sequence[Delivery], reason: str) -> None:
        """Move these deliveries to the dead-letter store with ``reason`` (and ack them)."""

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters, newest first."""

    async def replay(self, ids: Sequence[str]) -> int:
        """Re-publish the dead letters with these message ids unchanged; return how many."""

    async def purge_dead_letters(self) -> int:
        """Delete all dead letters; return how many."""

    async def revoke(self, ids: Sequence[str], ttl: float) -> None:
        """Record these message ids as revoked for ``ttl`` seconds (see the module docstring)."""

    async def revoked_since(self, cursor: Any) -> tuple[list[str], Any]:
        """Ids revoked after ``cursor`` (``None``: any still recorded), and the new cursor."""

    async def stats(self) -> Mapping[str, QueueStats]:
        """Counts per known queue."""

    async def purge(self, queue: str) -> int:
        """Delete every message waiting in ``queue``; return how many."""

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Record that a worker is alive, for ``ttl`` seconds."""

    async def workers(self) -> list[WorkerInfo]:
        """The workers whose last heartbeat has not expired."""

    async def forget_worker(self, name: str) -> None:
        """Remove a worker's heartbeat (on clean shutdown)."""


@runtime_checkable
class DataSink(Protocol):
    """A store for document messages; the ``default`` sink holds task results.

    Documents are keyed by id and written with upsert semantics; a later write of
    the same id replaces the earlier one.
    """

    url: str

    async def connect(self) -> None:
        """Open connections; create what the backend needs."""

    async def close(self) -> None:
        """Release connections."""

    async def store(self, documents: Sequence[StoredDocument], ttl: float | None) -> None:
        """Write (upsert) ``documents``, each expiring after ``ttl`` seconds (``None``: never)."""

    async def store_if_absent(self, documents: Sequence[StoredDocument], ttl: float | None) -> None:
        """Write each document only where no document with its id exists yet."""

    async def get(self, ids: Sequence[str]) -> dict[str, StoredDocument]:
        """The stored documents among ``ids`` (missing ids are left out)."""

    async def wait(
        self, ids: Sequence[str], timeout: float, states: frozenset[str]
    ) -> dict[str, StoredDocument]:
        """Like :meth:`get`, for documents whose state is in ``states``.

        Returns as soon as at least one of ``ids`` has such a document, or after
        ``timeout`` seconds with whatever there is (possibly nothing).
        """

    async def forget(self, ids: Sequence[str]) -> None:
        """Delete these documents."""


@runtime_checkable
class Coordinator(Protocol):
    """Shared state for scheduling decisions across processes: counters, claims, leases, rates.

    A coordinator is what limits and schedules that span workers keep their state in
    (global concurrency limits, global rate limits, periodic ticks published once by
    several schedulers, chord completion). It is opened from a URL by
    :func:`celeriac.coordination.open_coordinator`, usually the broker's own URL:
    ``memory://``, ``sqlite:///``, ``redis://`` and ``postgresql://`` (see
    ``docs/coordination.md``; NATS and RabbitMQ brokers need a coordinator URL of
    their own).

    The contract, which :mod:`celeriac.testing.coordination` checks on every backend:

    * **Atomic.** Every method is one atomic step on the store (one Lua script, one
      SQL statement or one locked transaction): concurrent callers in any number of
      processes see each other's steps in some order, never half of one.
    * **One clock.** Expiry, leases and rates are measured by the store's clock
      (:meth:`time`): the server's where there is a server, so the clocks of the
      callers do not matter. ``ttl`` and ``rate`` are in seconds of that clock.
    * **Key spaces.** Each primitive has keys of its own: a counter, a tally, a
      claim, a semaphore and a throttle may all be called ``"x"`` without meeting.
      Keys are any text; a store is shared by every coordinator on the same URL
      (Redis ``prefix``, PostgreSQL ``schema``, SQLite file, memory name).
    * **Expiry is exact for readers.** Something whose time ran out counts as
      absent at once; backends delete the leftovers later.
    * Arguments out of range (a negative ``ttl``, ``rate <= 0``, ``burst < 1``,
      ``limit < 0``) raise :class:`ValueError`; a failing store raises
      :class:`~celeriac.errors.BrokerError`.
    """

    url: str

    async def connect(self) -> None:
        """Open connections and create what the backend needs (tables...)."""

    async def close(self) -> None:
        """Release connections. What is stored stays (until it expires)."""

    async def time(self) -> float:
        """The store's clock, in unix seconds: what every ttl and rate is measured by."""

    async def add(self, key: str, delta: int, ttl: float | None) -> int:
        """Add ``delta`` to the counter ``key`` and return its new value.

        A counter that does not exist (or has expired) starts at 0, so ``add(key, 0,
        ...)`` reads it. Every call sets the counter's expiry: ``ttl`` seconds from
        now, or never for ``None`` (so ``None`` also cancels an earlier ttl). Not
        idempotent: a retried call counts twice (see :meth:`tally`).
        """

    async def tally(self, key: str, member: str | Sequence[str], ttl: float | None) -> int:
        """Add ``member`` (or every member of a non-empty list, in one atomic step) to the
        set ``key`` and return how many distinct members it has.

        Idempotent per member: counting the same member again (a redelivered
        message) returns the current count and changes nothing, which is what
        counting chord results needs. Expiry as for :meth:`add`, for the whole set.
        The caller that sees the count reach its goal acts; since a repeated call
        sees it too, make that action idempotent or guard it with :meth:`claim`.
        """

    async def claim(self, key: str, owner: str, ttl: float) -> str:
        """Make ``owner`` hold ``key`` for ``ttl`` seconds, unless someone else holds it.

        Returns the owner holding the claim after the call: ``owner`` when this call
        won it, or already held it (then its expiry moves to ``ttl`` seconds from
        now, longer or shorter); the other holder's name otherwise (nothing
        changes). A claim whose ttl ran out is free for anyone. A holder gives its
        claim up early with ``ttl=0`` (it expires at once). Used to publish each
        periodic tick once (``claim(f"tick:{name}:{when}", me, ttl)``) and to elect
        one leader among several schedulers (renewed well within ``ttl``).
        """

    async def acquire(self, key: str, holder: str, limit: int, ttl: float) -> bool:
        """Take one of the ``limit`` slots of the semaphore ``key`` for ``holder``.

        Returns True when ``holder`` now holds a slot, leased for ``ttl`` seconds:
        taken by this call, or already held (its lease is then renewed, even if the
        limit has since been lowered below the slots taken). False when ``limit``
        live leases of other holders exist: nothing changes. A lease that is not
        renewed within its ``ttl`` frees its slot, so a holder that died (even by
        SIGKILL) gives its slot back after ``ttl``. ``holder`` names one unit of
        work (a worker and a task id); ``limit=0`` admits no one new.
        """

    async def release(self, key: str, holder: str) -> None:
        """Give back ``holder``'s slot of the semaphore ``key`` (nothing if it holds none)."""

    async def holding(self, key: str) -> int:
        """How many live leases the semaphore ``key`` has."""

    async def throttle(self, key: str, rate: float, burst: int, ahead: float = 0.0) -> float:
        """Ask the rate limit ``key`` for one unit: the wait until it may go.

        GCRA (generic cell rate algorithm): at most ``rate`` units a second, and
        ``burst`` (>= 1) at once after a quiet spell; over any ``t`` seconds no more
        than ``burst + rate * t`` slots, smooth, with no window edges to burst across.
        The unit's slot is counted when it is due within ``ahead`` seconds: the
        answer is then the wait until that slot (``0.0``: now), and the caller must
        go then. With the default ``ahead=0`` that is "admitted now"; a caller that
        reserves its slot ahead (an interval or more) and sleeps until it loses no
        capacity to its own lateness, which plain asking does (each late return
        moves the schedule). When the slot is further off, nothing is counted and
        the answer, more than ``ahead``, is how long until that slot: asking again
        ``answer - ahead`` later can reserve it, unless another caller took it first.
        So an answer of at most ``ahead`` always means "counted". The same key may be
        asked with another rate later (the state carries over).
        """
