"""The result publisher (CEP "Result Publisher"): store outcomes, then acknowledge.

Runners hand it finished jobs; it writes their result documents to the sinks in
batches and only then acknowledges the deliveries: an outcome is durable before
its message is forgotten, so a crash in between means a redelivery, never a loss.
Canvas steps that settled advance their workflows (the router, see
:mod:`celeriac.router.router`) after their documents are stored and before
their messages are acked. It also carries retries (the next attempt is published before the failed
delivery is acked), dead letters, releases (nack) and plain acks, in the same
order guarantee. If a sink or the broker fails, the batch is retried with backoff and
nothing is acknowledged until it succeeds.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from celeriac._notify import Notifier
from celeriac.abc import Broker, DataSink, Delivery, Outgoing, StoredDocument
from celeriac.errors import BrokerError

if TYPE_CHECKING:
    from celeriac.messages import Envelope
    from celeriac.router.router import Router, StepDone

__all__ = ["ResultPublisher"]

log = logging.getLogger("celeriac.worker")


class _Batch:
    __slots__ = (
        "acks",
        "dead",
        "docs",
        "events",
        "nacks",
        "retries",
        "started",
        "steps",
        "stored",
    )

    def __init__(self) -> None:
        self.docs: list[tuple[Sequence[str], StoredDocument]] = []
        self.started: dict[str, Callable[[], StoredDocument]] = {}
        self.acks: list[Delivery] = []
        self.dead: list[tuple[Delivery, str]] = []
        self.nacks: list[tuple[Delivery, float]] = []
        self.retries: list[tuple[Delivery, Outgoing]] = []
        self.steps: list[StepDone] = []
        self.events: list[Envelope] = []
        self.stored = False  # the steps' outcomes were stored with the documents

    def __bool__(self) -> bool:
        return bool(
            self.docs or self.started or self.acks or self.dead or self.nacks or self.retries
        )

    def deliveries(self) -> list[Delivery]:
        return (
            self.acks
            + [d for d, _ in self.dead]
            + [d for d, _ in self.nacks]
            + [d for d, _ in self.retries]
        )


class ResultPublisher:
    """Batches outcome documents and acknowledgements; store first, then ack."""

    def __init__(
        self,
        broker: Broker,
        sinks: Mapping[str, DataSink],
        *,
        result_ttl: float | None,
        on_settled: Callable[[Sequence[Delivery], Sequence[Delivery]], None],
        backoff: tuple[float, float] = (0.05, 5.0),
        router: Router | None = None,
    ) -> None:
        self.broker = broker
        self.router = router
        self.sinks = sinks
        self.result_ttl = result_ttl
        self.on_settled = on_settled
        self.backoff = backoff
        self._batch = _Batch()
        self._wakeup = Notifier()
        self._idle = Notifier()
        self._busy = False
        self._waiting = False
        self._closing = False

    def _kick(self) -> None:
        if self._waiting:
            self._waiting = False
            self._wakeup.notify()

    def started(self, id: str, document: Callable[[], StoredDocument]) -> None:
        """Record that task ``id`` started; ``document()`` is called only if it is
        still running when the batch is written (a finished task's outcome wins)."""
        self._batch.started[id] = document
        self._kick()

    def finished(
        self,
        delivery: Delivery,
        doc: StoredDocument | None,
        sinks: Sequence[str],
        also: Sequence[StoredDocument] = (),
        step: StepDone | None = None,
    ) -> None:
        """Store ``doc`` (if any) in ``sinks`` and ``also`` in the default sink, advance
        the workflow of ``step`` (a canvas step that settled), then ack ``delivery``."""
        batch = self._batch
        if doc is not None:
            batch.started.pop(doc.id, None)
            batch.docs.append((sinks, doc))
        batch.docs += [(("default",), extra) for extra in also]
        if step is not None:
            batch.steps.append(step)
        batch.acks.append(delivery)
        self._kick()

    def dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        doc: StoredDocument | None = None,
        sinks: Sequence[str] = ("default",),
        also: Sequence[StoredDocument] = (),
        step: StepDone | None = None,
    ) -> None:
        """Move ``delivery`` to the dead-letter store (after storing ``doc`` in ``sinks``
        and ``also`` in the default sink, and advancing the workflow of ``step``)."""
        if doc is not None:
            self._batch.started.pop(doc.id, None)
            self._batch.docs.append((sinks, doc))
        self._batch.docs += [(("default",), extra) for extra in also]
        if step is not None:
            self._batch.steps.append(step)
        self._batch.dead.append((delivery, reason))
        self._kick()

    def route_event(self, delivery: Delivery, event: Envelope) -> None:
        """Publish one command per subscriber of ``event`` (the router), then ack it."""
        self._batch.events.append(event)
        self._batch.acks.append(delivery)
        self._kick()

    def retry(self, delivery: Delivery, again: Outgoing, doc: StoredDocument | None) -> None:
        """Store ``doc`` (the RETRY state), publish ``again`` (the next attempt, with its
        delay as eta) to this broker, then ack ``delivery``: a retry is a new message."""
        if doc is not None:
            self._batch.started.pop(doc.id, None)
            self._batch.docs.append((("default",), doc))
        self._batch.retries.append((delivery, again))
        self._kick()

    def release(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Return ``delivery`` to its queue (nack), due again after ``delay`` seconds."""
        self._batch.nacks.append((delivery, delay))
        self._kick()

    def pending(self) -> int:
        """How many deliveries wait to be settled."""
        return len(self._batch.deliveries())

    async def flush(self) -> None:
        """Wait until everything handed over so far is settled."""
        while self._batch or self._busy:
            version = self._idle.version
            self._wakeup.notify()
            await self._idle.wait(version, timeout=0.5)

    def close(self) -> None:
        """Ask :meth:`run` to return once everything is settled."""
        self._closing = True
        self._wakeup.notify()

    async def _write(self, batch: _Batch) -> None:
        by_sink: dict[str, list[StoredDocument]] = {}
        if batch.started:
            started = [make() for make in batch.started.values()]
            batch.started.clear()  # a retry of this batch must not write them again late
            await self.sinks["default"].store(started, self.result_ttl)
        for names, doc in batch.docs:
            for name in names:
                by_sink.setdefault(name, []).append(doc)
        if batch.steps and self.router is not None and batch.docs:
            # The steps' outcomes go with the results, in one write.
            by_sink.setdefault("default", []).extend(self.router.outcome_documents(batch.steps))
            batch.stored = True
        for name, docs in by_sink.items():
            await self.sinks[name].store(docs, self.result_ttl)
        batch.docs.clear()  # stored: a retry of this batch need not store them again
        if batch.steps:
            advance = functools.partial(self._advance, stored=batch.stored)
            await self._routed("advance the workflows of", batch.steps, advance)
            batch.steps.clear()
        if batch.events:
            await self._routed("route", batch.events, self._fan_out)
            batch.events.clear()
        if batch.retries:
            await self.broker.publish([again for _, again in batch.retries])
            batch.acks += [delivery for delivery, _ in batch.retries]
            batch.retries.clear()  # published: a retry of this batch must not publish again
        if batch.acks:
            await self.broker.ack(batch.acks)
        if batch.dead:
            by_reason: dict[str, list[Delivery]] = {}
            for delivery, reason in batch.dead:
                by_reason.setdefault(reason, []).append(delivery)
            for reason, deliveries in by_reason.items():
                await self.broker.dead_letter(deliveries, reason)
        if batch.nacks:
            by_delay: dict[float, list[Delivery]] = {}
            for delivery, delay in batch.nacks:
                by_delay.setdefault(delay, []).append(delivery)
            for delay, deliveries in by_delay.items():
                await self.broker.nack(deliveries, delay)

    async def _advance(self, steps: list[StepDone], stored: bool) -> None:
        assert self.router is not None
        await self.router.advance(steps, stored=stored)

    async def _fan_out(self, events: list[Envelope]) -> None:
        assert self.router is not None
        await self.router.fan_out(events)

    async def _routed(self, what: str, items: list[Any], call: Callable[..., Any]) -> None:
        """Run the router's part of a batch. A store that fails is retried with the
        batch; anything else (a malformed or expired workflow) is logged and the
        messages are acknowledged anyway, so one bad workflow never stalls the
        worker's results."""
        if self.router is None:
            log.error("no router here: cannot %s %d message(s)", what, len(items))
            return
        try:
            await call(items)
        except BrokerError:
            raise
        except Exception:
            log.exception("could not %s %d message(s); acknowledged anyway", what, len(items))

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Settle batches until closed and empty."""
        self._closing = False
        task_status.started()
        while True:
            version = self._wakeup.version
            if not self._batch:
                self._idle.notify()
                if self._closing:
                    return
                self._waiting = True
                if not self._batch:
                    await self._wakeup.wait(version)
                self._waiting = False
                continue
            batch, self._batch = self._batch, _Batch()
            self._busy = True
            delay = self.backoff[0]
            while True:
                try:
                    with anyio.CancelScope(shield=self._closing):
                        await self._write(batch)
                    break
                except Exception as exc:
                    log.warning(
                        "could not settle %d outcome(s), retrying: %r", len(batch.docs), exc
                    )
                    await anyio.sleep(delay)
                    delay = min(delay * 2, self.backoff[1])
            self._busy = False
            self.on_settled(batch.deliveries(), [d for d, _ in batch.dead])
