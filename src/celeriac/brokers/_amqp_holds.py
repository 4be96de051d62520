"""What an ``amqp://`` broker instance holds: leases, fencing, and how it settles.

A delivery handed out by ``fetch`` is *held* under a lease until it is settled.

* **Leases.** RabbitMQ only takes a delivery back when its channel closes, so the
  lease is kept here: a reaper nacks (requeues) a held delivery whose lease ran
  out, and RabbitMQ hands it out again with ``x-delivery-count`` (so
  ``deliveries``) incremented; ``extend`` moves the lease. If the process dies,
  RabbitMQ requeues everything its connection held.
* **Fencing.** A receipt is ``(consumer serial, delivery tag)``: a tag is only valid
  on its channel, and the serial names that channel's incarnation. A tag is acked
  or nacked at most once and only while its channel lives (anything else closes
  the channel). A stale receipt is ignored, except that ``ack`` and
  ``dead_letter`` finish the delivery of the same message held here now, if any.
* **Frames.** Decisions are made synchronously, in order; the frames are written
  after, an uninterrupted leading run of acks as one ``multiple`` ack.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import aiormq

from celeriac.abc import Delivery

if TYPE_CHECKING:
    from celeriac.brokers._amqp_feed import Feed

__all__ = ["Consumer", "Entry", "Holds"]

log = logging.getLogger("celeriac.brokers.amqp")

_SERIALS = itertools.count(1)


class Consumer:
    """One priority level of a feed, on its own channel."""

    def __init__(self, feed: Feed, level: int) -> None:
        self.feed = feed
        self.level = level
        self.serial = next(_SERIALS)
        self.channel: aiormq.Channel | None = None
        self.closer: Callable[[], Coroutine[Any, Any, None]] | None = None
        self.unacked: dict[int, Entry] = {}  # in tag order
        self.acks: list[int] = []  # decided, not yet written
        self.nacks: list[int] = []
        self.lock = asyncio.Lock()
        self.alive = True


class Entry:
    """A message pushed to this instance and not yet settled."""

    __slots__ = ("body", "consumer", "deadline", "deliveries", "eta", "id", "seq", "tag")

    def __init__(
        self,
        consumer: Consumer,
        tag: int,
        id: str,
        body: bytes,
        deliveries: int,
        eta: float | None,
        seq: int,
    ) -> None:
        self.consumer = consumer
        self.tag = tag
        self.id = id
        self.body = body
        self.deliveries = deliveries
        self.eta = eta
        self.seq = seq
        self.deadline = 0.0

    @property
    def queue(self) -> str:
        return self.consumer.feed.name

    @property
    def priority(self) -> int:
        return self.consumer.level

    @property
    def receipt(self) -> tuple[int, int]:
        return (self.consumer.serial, self.tag)


class Holds:
    """The deliveries held by one broker instance, their leases, and their settling."""

    def __init__(self, visibility_timeout: float, lost: Callable[[Consumer], None]) -> None:
        self.visibility_timeout = visibility_timeout
        self.lost = lost  # called when a consumer's channel turns out to be gone
        self.reset()

    def reset(self) -> None:
        """Forget everything: the connection is gone, and RabbitMQ requeued it all."""
        self.held: dict[tuple[int, int], Entry] = {}
        self.held_ids: dict[tuple[str, str], tuple[int, int]] = {}
        self.leases: list[tuple[float, tuple[int, int]]] = []

    def hold(self, entry: Entry, deadline: float) -> Delivery:
        """Hand ``entry`` out, leased until ``deadline`` (loop time)."""
        entry.deadline = deadline
        receipt = entry.receipt
        self.held[receipt] = entry
        self.held_ids[(entry.queue, entry.id)] = receipt
        heapq.heappush(self.leases, (deadline, receipt))
        return Delivery(
            entry.queue, entry.id, entry.body, entry.deliveries, receipt, entry.priority
        )

    def unhold(self, entry: Entry) -> None:
        """Stop holding ``entry`` (if held)."""
        receipt = entry.receipt
        if self.held.get(receipt) is entry:
            del self.held[receipt]
            if self.held_ids.get((entry.queue, entry.id)) == receipt:
                del self.held_ids[(entry.queue, entry.id)]

    def release(self, delivery: Delivery, *, by_id: bool) -> Entry | None:
        """Stop holding the delivery ``delivery`` names (or, ``by_id``, this message's)."""
        entry = self.held.get(delivery.receipt)
        if entry is None and by_id:
            current = self.held_ids.get((delivery.queue, delivery.id))
            entry = self.held.get(current) if current is not None else None
        if entry is not None:
            self.unhold(entry)
        return entry

    def extend(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Move the lease end of the deliveries still held to ``seconds`` from now."""
        deadline = asyncio.get_running_loop().time() + seconds
        for delivery in deliveries:
            entry = self.held.get(delivery.receipt)
            if entry is not None:
                entry.deadline = deadline
                heapq.heappush(self.leases, (deadline, delivery.receipt))

    # -- settling -----------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Ack the deliveries held here (see fencing in the module docstring)."""
        entries = [e for e in (self.release(d, by_id=True) for d in deliveries) if e]
        await self.write(self.decide(entries, requeue=False))

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        """Requeue the deliveries still held (RabbitMQ counts the return)."""
        entries = [e for e in (self.release(d, by_id=False) for d in deliveries) if e]
        await self.write(self.decide(entries, requeue=True))

    async def settle_with(
        self,
        deliveries: Sequence[Delivery],
        publish: Callable[[list[Entry]], Awaitable[None]],
        *,
        by_id: bool,
    ) -> None:
        """Publish something for each delivery still held (a copy), then ack it.

        If publishing fails, the deliveries stay held and the error propagates.
        """
        entries = [e for e in (self.release(d, by_id=by_id) for d in deliveries) if e]
        if not entries:
            return
        try:
            await publish(entries)
        except BaseException:
            for entry in entries:  # still ours: hold them again
                if entry.consumer.alive and entry.tag in entry.consumer.unacked:
                    self.hold(entry, entry.deadline)
            raise
        await self.write(self.decide(entries, requeue=False))

    @staticmethod
    def decide(entries: Sequence[Entry], *, requeue: bool) -> list[Consumer]:
        """Settle ``entries`` now (synchronously, in order); :meth:`write` sends the frames."""
        consumers: dict[int, Consumer] = {}
        for entry in entries:
            consumer = entry.consumer
            if consumer.unacked.pop(entry.tag, None) is not None:
                (consumer.nacks if requeue else consumer.acks).append(entry.tag)
                consumers[consumer.serial] = consumer
        return list(consumers.values())

    async def write(self, consumers: list[Consumer]) -> None:
        """Send the frames decided for ``consumers``."""
        for consumer in consumers:
            await self._flush(consumer)

    async def _flush(self, consumer: Consumer) -> None:
        """Write a consumer's decided frames; one ``multiple`` ack covers a leading run.

        Frames are taken and the run computed in one synchronous step under the
        lock: every tag below the oldest unsettled one is then in this batch (or
        written before), so the ``multiple`` ack never covers a tag whose own
        frame is still to come (which would close the channel).
        """
        async with consumer.lock:
            acks, nacks, consumer.acks, consumer.nacks = consumer.acks, consumer.nacks, [], []
            channel = consumer.channel
            if (not acks and not nacks) or channel is None or not consumer.alive:
                return
            first_open = next(iter(consumer.unacked), None)
            run = sorted(t for t in acks if first_open is None or t < first_open)
            rest = sorted(set(acks).difference(run))
            try:
                for tag in nacks:
                    await channel.basic_nack(tag, requeue=True, wait=False)
                if run:
                    await channel.basic_ack(run[-1], multiple=len(run) > 1, wait=False)
                for tag in rest:
                    await channel.basic_ack(tag, wait=False)
            except Exception as exc:  # the channel is gone, and RabbitMQ requeued them
                log.debug("acks lost with their channel: %r", exc)
                self.lost(consumer)

    async def reap(self) -> None:
        """Requeue held deliveries whose lease ran out (run it as a task)."""
        tick = min(max(self.visibility_timeout / 8, 0.01), 1.0)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            expired = []
            leases = self.leases
            while leases and leases[0][0] <= now:
                _, receipt = heapq.heappop(leases)
                entry = self.held.get(receipt)
                if entry is not None and entry.deadline <= now:
                    self.unhold(entry)
                    expired.append(entry)
            if len(leases) > 64 + 2 * len(self.held):
                self.leases = [(e.deadline, r) for r, e in self.held.items()]
                heapq.heapify(self.leases)
            if expired:
                await self.write(self.decide(expired, requeue=True))

    def held_in(self, queue: str) -> int:
        """How many deliveries of ``queue`` are held."""
        return sum(1 for e in self.held.values() if e.queue == queue)
