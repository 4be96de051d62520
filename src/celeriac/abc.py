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
