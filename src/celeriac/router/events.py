"""Event fan-out: one event message becomes one command per subscriber, once.

Subscriptions are shared through the app's default sink, so the worker that
receives an event need not have the subscribers' code: every runtime of an app
with subscriptions (a worker at start, a producer before its first event) adds
its own to the document ``subs:<event>`` (a JSON list of ``{task, queue}``),
under a short claim in the coordinator so concurrent writers do not lose each
other's entries. Removing a subscription is explicit (:meth:`Subscriptions.remove`).

When a worker receives an event it reads that list (cached for a second) and
publishes, before acknowledging the event, one command per subscriber:

- its id is derived from (event id, task), so a redelivered event yields the same
  commands, not new ones;
- it carries the event's fields as keyword arguments, the event id as
  ``correlation_id`` and ``causation_id``, and the header ``celeriac-event``;
- the event is marked published in the coordinator right after the broker
  accepted the commands; a redelivered event that finds the mark publishes
  nothing, and a command whose result is stored is not run again (the worker
  checks for commands carrying ``celeriac-event``), so each subscriber runs once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence

import anyio
import msgspec

from celeriac.abc import Coordinator, DataSink, StoredDocument
from celeriac.messages import Envelope

__all__ = ["EVENT", "Subscriber", "Subscriptions", "command_id", "commands_for"]

log = logging.getLogger("celeriac.router")

EVENT = "celeriac-event"  #: header of a command made from an event: the event id


class Subscriber(msgspec.Struct, frozen=True, order=True):
    """A task that runs for each event of one name, on its queue."""

    task: str
    queue: str = "default"


_LIST = msgspec.json.Decoder(list[Subscriber])


def command_id(event_id: str, task: str) -> str:
    """The id of the command for subscriber ``task`` of event ``event_id``."""
    return hashlib.blake2b(f"{event_id}:{task}".encode(), digest_size=16).hexdigest()


class Subscriptions:
    """The shared subscriber lists of one app, in its default sink."""

    def __init__(self, sink: DataSink, coordinator: Coordinator, cache: float = 1.0) -> None:
        self.sink = sink
        self.coordinator = coordinator
        self.cache = cache
        self._seen: dict[str, tuple[float, list[Subscriber]]] = {}

    @staticmethod
    def doc_id(event: str) -> str:
        """The id of the document listing ``event``'s subscribers."""
        return f"subs:{event}"

    async def of(self, event: str, fresh: bool = False) -> list[Subscriber]:
        """The subscribers of ``event`` (read at most once a ``cache`` period)."""
        now = time.monotonic()
        cached = self._seen.get(event)
        if cached is not None and not fresh and now - cached[0] < self.cache:
            return cached[1]
        doc = (await self.sink.get([self.doc_id(event)])).get(self.doc_id(event))
        found = _LIST.decode(doc.body) if doc is not None else []
        self._seen[event] = (now, found)
        return found

    async def add(self, event: str, subscribers: Sequence[Subscriber]) -> None:
        """Add these subscribers to ``event``'s list (those already there stay once)."""
        await self._change(event, lambda current: sorted({*current, *subscribers}))

    async def remove(self, event: str, tasks: Sequence[str]) -> None:
        """Remove subscribers by task name from ``event``'s list."""
        await self._change(event, lambda current: [s for s in current if s.task not in tasks])

    async def _change(
        self, event: str, change: Callable[[list[Subscriber]], list[Subscriber]]
    ) -> None:
        key, me = f"subs-lock:{event}", f"{id(self):x}:{time.monotonic()}"
        delay = 0.01
        while await self.coordinator.claim(key, me, 10.0) != me:
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)
        try:
            current = await self.of(event, fresh=True)
            updated = change(current)
            if updated != current:
                body = msgspec.json.encode(updated)
                await self.sink.store([StoredDocument(self.doc_id(event), "SUBS", body)], None)
                self._seen[event] = (time.monotonic(), updated)
        finally:
            await self.coordinator.claim(key, me, 0)


def commands_for(event: Envelope, subscribers: Sequence[Subscriber]) -> list[Envelope]:
    """One command per subscriber of ``event`` (see the module docstring)."""
    now = time.time()
    return [
        Envelope(
            id=command_id(event.id, subscriber.task),
            name=subscriber.task,
            kwargs=dict(event.kwargs),
            headers={**event.headers, EVENT: event.id},
            queue=subscriber.queue,
            priority=event.priority,
            correlation_id=event.correlation_id or event.id,
            causation_id=event.id,
            sent_at=now,
            traceparent=event.traceparent,
        )
        for subscriber in subscribers
    ]
